"""A package outside tokreason holding a method of its own (the plug-in test's example)."""
