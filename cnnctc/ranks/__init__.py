"""Reading and evaluating under ``msrun``: which share of the work is this process's, and where
the shares meet.

``msrun --worker_num=N`` starts N workers (ranks 0..N-1) and a scheduler process, all running the
same command. For ``predict`` and ``eval`` each worker reads its own contiguous share of the
batches, in the batches one process would make; the scheduler relays the other ranks' readings
to rank 0 over TCP (msrun's ``--master_addr:--master_port``), and rank 0 alone puts them
together, scores them and writes the user's outputs, so the result is exactly one process's.
Reading never forms MindSpore's cluster (no ``mindspore.communication.init``): a worker's rank
and the count come from msrun's environment, so onnxruntime workers work the same. No MindSpore
import here.
"""
from .launch import Launch, msrun_launch, share
from .meeting import Meeting
from .relay import serve

__all__ = ["Launch", "msrun_launch", "share", "Meeting", "serve"]
