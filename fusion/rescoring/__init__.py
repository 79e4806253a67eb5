"""After the first pass: N-best rescoring (:mod:`~fusion.rescoring.rescore`) and the tuning
of fusion weights on a dev set (:mod:`~fusion.rescoring.tune`)."""
