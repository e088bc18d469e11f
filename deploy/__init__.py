"""Deployment recipe for several hosts (issue #17): nginx config template and deploy/stack.py."""
