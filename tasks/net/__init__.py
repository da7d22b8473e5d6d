"""The only code that opens sockets or channels: the SSH executor and its tunnels, the progress
display, a task's session (executor, etcd client, lock), the etcd and registry clients and the
Docker Engine API.
"""
