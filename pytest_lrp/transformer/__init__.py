"""The transformers backend: Hugging Face models named by Python code, explained with LXT (AttnLRP, CP-LRP).

What lives here: importing transformers and LXT with one line when they are missing (runtime.py), a
``PreTrainedModel`` and its inputs (token ids and attention masks, or pixel values) (loading.py), LXT's
patch maps per model family with pytest-lrp's additions to LXT 2.1 (lxt_maps.py), its explicit rules on
Llama (explicit.py), the patches applied for one analysis and undone after (patching.py), the analysis into
the framework-free Analysis record with relevance per block and module (analysis.py), and the leak of LXT's
rules split by mechanism, an unpatched operation named (accounting.py).

May import: pytorch (the module loader, the per-module relevance tracker, torch's runtime), checks (the
Analysis record, the reruns), config, base. Never TensorFlow or innvestigate.
"""
