"""The dataset: download (fetch, archive checks) and the prepared cache every later stage reads
(``pipeline.data.cache.load_prepared``)."""
