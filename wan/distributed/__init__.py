"""Multi-GPU inference applied from outside unchanged models: process groups, Ulysses sequence
parallelism, CFG parallelism and FSDP2 (spec 10). Nothing in wan/modules imports this package."""
from .parallel import Parallel, ParallelConfig
from .util import (broadcast_object, failing_together, finish, init_distributed, is_main,
                   report_failure, world_info)

__all__ = ['Parallel', 'ParallelConfig', 'broadcast_object', 'failing_together', 'finish',
           'init_distributed', 'is_main', 'report_failure', 'world_info']
