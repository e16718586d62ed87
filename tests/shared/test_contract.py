from shared import contract
from shared.events import EVENT_TYPES


def test_generated_schemas_are_up_to_date() -> None:
    stale = contract.stale_files()
    assert not stale, f"run `make schemas`: these differ from the models: {stale}"


def test_every_event_has_a_schema_and_an_asyncapi_message() -> None:
    schemas = contract.event_schemas()
    doc = contract.asyncapi()
    for name, cls in EVENT_TYPES.items():
        schema = schemas[f"{name}.v{cls.SCHEMA_VERSION}.json"]
        assert schema["properties"]["event_type"]["const"] == name
        assert name in doc["components"]["messages"]
        channel = doc["channels"][cls.TOPIC.replace(".", "_")]
        assert name in channel["messages"]
