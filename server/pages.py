"""The web pages blueprint (upload, result, model card, reports)."""

from flask import Blueprint

bp = Blueprint("pages", __name__)
