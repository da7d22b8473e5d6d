"""The runbooks: read facts once, plan, print the plan or apply it, through ``tasks.net``. Each
module's thin ``@air_task`` wrappers are one `fab` namespace (see fabfile.py).
"""
