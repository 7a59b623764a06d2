"""Azure AI services as providers (extra ``azure``): each module is imported only when chosen.

* :mod:`.translation`: ``AzureTranslator`` (``Translator`` and ``LanguageDetector``),
  azure-ai-translation-text 2.x;
* :mod:`.vision`: ``AzureImageAnalyzer`` (``ImageAnalyzer``), azure-ai-vision-imageanalysis 1.x;
* :mod:`.speech`: ``AzureSpeechSynthesizer`` (``SpeechSynthesizer``),
  azure-cognitiveservices-speech;
* :mod:`.errors`: the one mapping of SDK errors to :mod:`actors.errors`, also used by
  :mod:`actors.providers.openai_compat` (Azure OpenAI and OpenAI-compatible endpoints).

This package imports no SDK itself, so ``errors`` works with only the ``openai`` extra.
Every adapter turns its SDK's retries off; the saga owns retries and honours Retry-After.
"""
