"""The web edge: blueprints (API, pages, errors), the OpenAPI document, uploads, request ids, the model accessor."""
