"""The one error family: what each member says, and how the API and the command line report it."""
import pytest

from models.enums import EntityKind
from models.errors import ConflictError, InvalidInput, MatcherError, NotFinished, NotFoundError
from models.schemas import MatchRequest, parse


def test_each_member_carries_its_status_code_and_exit_code():
    family = (InvalidInput, NotFoundError, ConflictError, NotFinished)
    assert [(e.http_status, e.code, e.exit_code) for e in family] == [
        (400, "invalid_request", 2), (404, "not_found", 1), (409, "conflict", 1), (409, "not_finished", 1)]
    assert all(issubclass(e, MatcherError) for e in family)


def test_messages_and_details():
    missing = NotFoundError(EntityKind.challenges, "ch-1", field="query.challenge_id")
    assert missing.message == str(missing) == "no challenge with id 'ch-1'"
    assert missing.details == [{"field": "query.challenge_id", "problem": "not found"}]
    assert missing.lines() == [missing.message]  # the command line says the message alone
    assert NotFoundError("job", "j").details == []
    assert ConflictError(EntityKind.organisations, "o").message == "organisation 'o' exists already"
    late = NotFinished("job", "j", "running")
    assert late.message == "job 'j' is running; its result is not ready"
    assert late.details == [{"field": "id", "problem": "status is running"}]


def test_invalid_input_says_its_first_problem_unless_given_a_message():
    two = [{"field": "k", "problem": "too big"}, {"field": "text", "problem": "empty"}]
    assert InvalidInput(two).message == "k: too big"
    assert InvalidInput(two).lines() == ["k: too big", "text: empty"]
    assert InvalidInput(two, "2 problems").lines() == ["2 problems", "k: too big", "text: empty"]
    assert InvalidInput([]).message == "the request is not valid"


def test_parse_validates_a_body_or_names_each_field():
    assert parse(MatchRequest, {"query": {"text": "leaks"}, "k": 3}).k == 3
    with pytest.raises(InvalidInput) as info:
        parse(MatchRequest, ["not", "an", "object"])
    assert info.value.details == [{"field": "body", "problem": "must be a JSON object"}]
    with pytest.raises(InvalidInput) as info:
        parse(MatchRequest, {"query": {"text": "x"}, "k": 0, "extra": 1}, prefix="requests[2]")
    assert [d["field"] for d in info.value.details] == ["requests[2].k", "requests[2].extra"]
