"""Route modules: the original product's API and the LangCache-compatible API."""
