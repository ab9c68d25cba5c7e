"""Online inference: ``mlsmith serve`` over the Open Inference Protocol (KServe v2).

``protocol`` reads and writes v2 requests (JSON and the binary tensor extension); ``models``
loads packages and follows registry aliases; ``batching`` merges concurrent requests;
``routing`` splits a served name between A/B variants and a shadow; ``feedback`` scores the
variants on labels sent back; ``predlog`` appends the prediction log; ``metrics`` is the
Prometheus side; ``app`` puts them behind FastAPI and ``server`` runs it under uvicorn.
"""
