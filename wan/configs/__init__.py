"""Task configs: `WAN_CONFIGS[task]` plus the size tables (spec 2.3, 14.1)."""
import copy
import os

os.environ['TOKENIZERS_PARALLELISM'] = 'false'

from .wan_animate_14B import animate_14B  # noqa: E402
from .wan_i2v_A14B import i2v_A14B  # noqa: E402
from .wan_s2v_14B import s2v_14B  # noqa: E402
from .wan_t2v_A14B import t2v_A14B  # noqa: E402
from .wan_ti2v_5B import ti2v_5B  # noqa: E402
from .wan_ti2v_tiny import ti2v_tiny  # noqa: E402

# Video-to-video continuation runs I2V (14B) or TI2V (5B) from the input's last frame.
v2v_14B = copy.deepcopy(i2v_A14B)
v2v_14B.__name__ = 'Config: Wan V2V 14B'
v2v_5B = copy.deepcopy(ti2v_5B)
v2v_5B.__name__ = 'Config: Wan V2V 5B'

WAN_CONFIGS = {
    't2v-A14B': t2v_A14B,
    'i2v-A14B': i2v_A14B,
    'ti2v-5B': ti2v_5B,
    'v2v-14B': v2v_14B,
    'v2v-5B': v2v_5B,
    's2v-14B': s2v_14B,
    'animate-14B': animate_14B,
    'ti2v-tiny': ti2v_tiny,  # bundled tiny model (wan/train/tiny.py)
}

# Accepted spellings that resolve to a WAN_CONFIGS key.
TASK_ALIASES = {'v2v-A14B': 'v2v-14B'}

# "W*H" -> (W, H)
SIZE_CONFIGS = {
    '720*1280': (720, 1280),
    '1280*720': (1280, 720),
    '480*832': (480, 832),
    '832*480': (832, 480),
    '704*1280': (704, 1280),
    '1280*704': (1280, 704),
    '1024*704': (1024, 704),
    '704*1024': (704, 1024),
}

_A14B_SIZES = ('720*1280', '1280*720', '480*832', '832*480')
_5B_SIZES = ('704*1280', '1280*704')

SUPPORTED_SIZES = {
    't2v-A14B': _A14B_SIZES,
    'i2v-A14B': _A14B_SIZES,
    'ti2v-5B': _5B_SIZES,
    'v2v-14B': _A14B_SIZES,
    'v2v-5B': _5B_SIZES,
    's2v-14B': tuple(SIZE_CONFIGS),
    'animate-14B': ('720*1280', '1280*720'),
}

# ti2v-tiny, the bundled model, has its own size (added last: s2v-14B lists the reference's sizes only)
SIZE_CONFIGS['128*128'] = (128, 128)
MAX_AREA_CONFIGS = {size: w * h for size, (w, h) in SIZE_CONFIGS.items()}
SUPPORTED_SIZES['ti2v-tiny'] = ('128*128',)
