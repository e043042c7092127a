"""Nuclio entry points of the cvat-tools WBC detector (see function.yaml).

Thin on purpose: the request/response contract and the models live in the installed package
(cvat_tools/serverless.py over cvat_tools/pipeline.py), where they are tested without Nuclio.
"""
from cvat_tools import serverless


def init_context(context):
    serverless.init_context(context)


def handler(context, event):
    return serverless.handler(context, event)
