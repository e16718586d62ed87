"""Common code of the GridDispatch services: contracts, settings, Kafka and PostgreSQL helpers.

Nothing in here imports a service; services import from here.
"""
