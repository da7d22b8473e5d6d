"""The domain, pure: cluster files and their schema, releases and versions, the etcd records'
layout and shapes, the rules of a rollout and of the release history, the status view and its
drift rules. No I/O beyond reading the operator's own files; imports no other layer.
"""
