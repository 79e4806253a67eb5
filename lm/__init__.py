"""Language models for fusion: n-gram (KenLM) and neural, behind one scoring interface."""
