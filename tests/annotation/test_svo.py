from annotation.svo import SVO, SpacyParser, third_person

PARSER = SpacyParser()


def test_clauses_with_subject_object_and_adpositional_phrases():
    (clause,) = PARSER.svos(["A man in a blue shirt cuts a red tomato with a knife."])[0]
    assert clause.subject == "a man in a blue shirt"
    assert clause.verb == "cut"
    assert clause.obj == "a red tomato"
    assert ("with", "a knife") in clause.preps
    assert clause.as_list()[:3] == ["a man in a blue shirt", "cut", "a red tomato"]


def test_coordinated_subordinate_and_phrasal_verbs_each_give_a_clause():
    clauses = PARSER.svos(["A large green ball grows while a person picks up a cup. The small red cup moves up."])[0]
    by_subject = {c.subject: c for c in clauses}
    assert by_subject["a person"].verb == "pick up" and by_subject["a person"].obj == "a cup"
    assert by_subject["the small red cup"].verb == "move up"
    assert by_subject["a large green ball"].verb == "grow"


def test_fragments_and_existentials():
    fragment, existential = PARSER.svos(["a red cup on a table", "There is a yellow bottle in the scene."])
    assert fragment == (SVO("a red cup", "", "", (("on", "a table"),)),)
    assert existential[0].subject == "a yellow bottle" and not existential[0].is_action


def test_static_verbs_are_not_actions():
    assert not SVO("a cup", "stay still").is_action
    assert not SVO("a cup", "be").is_action
    assert SVO("a cup", "move up").is_action


def test_noun_phrase_parts_and_the_human_rule():
    mug, person, hand, board = PARSER.noun_phrases(["A small red mug", "a person in a red shirt", "two hands", "a cutting board"])
    assert (mug.head, mug.modifiers, mug.is_human) == ("mug", ("red", "small"), False)
    assert person.head == "person" and person.is_human
    assert hand.head == "hand" and hand.is_human
    assert board.head == "board" and not board.is_human


def test_third_person():
    assert [third_person(v) for v in ("move", "carry", "wash", "go", "be", "pick up")] == [
        "moves", "carries", "washes", "goes", "is", "picks up"]


def test_parses_are_cached_by_text():
    parser = SpacyParser()
    first = parser.svos(["A cup moves.", "A cup moves."])
    assert first[0] is first[1]
    assert len(parser._svo_cache) == 1
