"""Models: loading any Hugging Face causal LM, and the embedded tiny base model built once and cached."""
