"""The configuration: the domain's vocabulary, the frozen model, and its loading.

One YAML file, read once and validated completely: every problem is reported at once with
the file, line and key (``load.load_config``). One module per section of the file."""
