"""peewee models and repositories: the only place SQL exists."""
