"""Running many utterances: one backend protocol for worker processes and Ray
(:mod:`~fusion.run.parallel`, :mod:`~fusion.run.distributed`), resumable sharded batch
decoding (:mod:`~fusion.run.batch`) and the memory allocator a command runs under
(:mod:`~fusion.run.allocator`). Imports :mod:`fusion.core` only."""
