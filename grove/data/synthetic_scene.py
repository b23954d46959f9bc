"""Scene sampling for the synthetic grounded-video dataset: which objects, how they move, what the caption says.

A scene holds *entities* (one caption phrase, or a distractor the caption never mentions), each drawn
as one or more *instances* ("two red balls" is one entity, two instances). Entities move in *groups*:
an entity alone, or a human with the object it acts on ("a hand pushes a cup"). A group follows one
keyframed track, and the caption is assembled from *clauses* over the groups, so every verb in the
caption is what some track does. The vocabulary is small on purpose (kinds, colours, sizes, a dozen
motions with a few synonyms each): a tiny model must be able to learn it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38),
    "green": (36, 168, 64),
    "blue": (40, 84, 222),
    "yellow": (238, 212, 36),
    "orange": (242, 128, 24),
    "purple": (142, 58, 184),
    "white": (242, 242, 242),
    "black": (24, 24, 24),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = ((236, 188, 150), (205, 142, 104), (150, 96, 64), (100, 64, 44))
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
SIZE_SCALE = {"small": 0.6, "large": 1.0}
GROW_SCALES = (0.55, 1.0)  # a growing object goes from the first to the second scale; shrinking, the reverse
OCCLUDER_NOUNS = ("wall", "board")
COUNT_WORDS = {2: "two", 3: "three"}

HORIZONTAL_MOTIONS = ("left", "right", "enters", "leaves", "hides")
ALL_MOTIONS = ("still", "left", "right", "up", "down", "grows", "shrinks", "enters", "leaves", "hides")


@dataclass(frozen=True)
class Kind:
    """An object kind: how it is named and how big it is drawn."""

    name: str
    nouns: tuple[str, ...]  # singular synonyms; nouns[0] is the canonical name
    plurals: tuple[str, ...]  # plural of each noun; empty when the kind never comes in several
    height: float  # drawn height at size "large", as a fraction of the frame height
    aspect: float  # drawn width / height
    motions: tuple[str, ...]
    garment: str = ""  # humans: their colour is a garment's ("a hand in a red glove")

    @property
    def is_human(self) -> bool:
        return bool(self.garment)


_OBJECT_MOTIONS = ALL_MOTIONS
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("person", ("person", "man", "woman"), (), 0.8, 0.42, ("still", "left", "right", "enters", "leaves", "hides"), "shirt"),
        Kind("hand", ("hand",), ("hands",), 0.32, 0.8, ("still", "left", "right", "up", "down", "grows", "enters", "leaves", "hides"), "glove"),
        Kind("cup", ("cup", "mug"), ("cups", "mugs"), 0.3, 1.0, _OBJECT_MOTIONS),
        Kind("ball", ("ball",), ("balls",), 0.28, 1.0, _OBJECT_MOTIONS),
        Kind("box", ("box", "carton"), ("boxes", "cartons"), 0.32, 1.15, _OBJECT_MOTIONS),
        Kind("knife", ("knife",), ("knives",), 0.13, 3.4, _OBJECT_MOTIONS),
        Kind("bowl", ("bowl",), ("bowls",), 0.24, 1.6, _OBJECT_MOTIONS),
        Kind("bottle", ("bottle",), ("bottles",), 0.42, 0.45, _OBJECT_MOTIONS),
        Kind("plate", ("plate", "dish"), ("plates", "dishes"), 0.16, 2.5, _OBJECT_MOTIONS),
        Kind("can", ("can", "tin"), ("cans", "tins"), 0.32, 0.68, _OBJECT_MOTIONS),
    )
}
OBJECT_KINDS = tuple(name for name, kind in KINDS.items() if not kind.is_human)

# Canonical verb phrase of each motion (frame_objects.action); {side} is filled in, {o} is the acted-on object.
ACTIONS = {
    "still": "stays still",
    "left": "moves to the left",
    "right": "moves to the right",
    "up": "moves up",
    "down": "moves down",
    "grows": "grows",
    "shrinks": "shrinks",
    "enters": "enters from the {side}",
    "leaves": "leaves to the {side}",
    "hides": "hides behind the wall and reappears",
}
INTERACTION_ACTIONS = {"left": "pushes {o} to the left", "right": "pushes {o} to the right", "up": "lifts {o}",
                       "down": "puts down {o}", "still": "holds {o}"}

# Caption verb phrases: (singular subject, plural subject).
_MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "still": (("stays still", "stay still"), ("rests in place", "rest in place"), ("does not move", "do not move")),
    "left": (("moves to the left", "move to the left"), ("slides to the left", "slide to the left"), ("goes left", "go left")),
    "right": (("moves to the right", "move to the right"), ("slides to the right", "slide to the right"), ("goes right", "go right")),
    "up": (("moves up", "move up"), ("rises", "rise"), ("goes up", "go up")),
    "down": (("moves down", "move down"), ("drops down", "drop down"), ("goes down", "go down")),
    "grows": (("grows", "grow"), ("gets bigger", "get bigger"), ("grows larger", "grow larger")),
    "shrinks": (("shrinks", "shrink"), ("gets smaller", "get smaller")),
    "enters": (("enters from the {side}", "enter from the {side}"), ("comes in from the {side}", "come in from the {side}")),
    "leaves": (("leaves to the {side}", "leave to the {side}"), ("exits to the {side}", "exit to the {side}"),
               ("moves out of view", "move out of view")),
    "hides": (("hides behind the {wall} and reappears", "hide behind the {wall} and reappear"),
              ("goes behind the {wall} and comes back out", "go behind the {wall} and come back out"),
              ("disappears behind the {wall} and reappears", "disappear behind the {wall} and reappear")),
}
_KIND_MOTION_PHRASES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("person", "left"): (("walks to the left", "walk to the left"), ("moves to the left", "move to the left")),
    ("person", "right"): (("walks to the right", "walk to the right"), ("moves to the right", "move to the right")),
    ("person", "still"): (("stands still", "stand still"), ("does not move", "do not move")),
    ("ball", "left"): (("rolls to the left", "roll to the left"), ("moves to the left", "move to the left")),
    ("ball", "right"): (("rolls to the right", "roll to the right"), ("moves to the right", "move to the right")),
}
# Human acting on an object: (active with singular subject, active with plural subject, passive).
_INTERACTION_PHRASES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "left": (("pushes {o} to the left", "push {o} to the left", "is pushed to the left by {h}"),
             ("slides {o} to the left", "slide {o} to the left", "is slid to the left by {h}")),
    "right": (("pushes {o} to the right", "push {o} to the right", "is pushed to the right by {h}"),
              ("slides {o} to the right", "slide {o} to the right", "is slid to the right by {h}")),
    "up": (("lifts {o}", "lift {o}", "is lifted by {h}"), ("picks up {o}", "pick up {o}", "is picked up by {h}")),
    "down": (("puts down {o}", "put down {o}", "is put down by {h}"), ("lowers {o}", "lower {o}", "is lowered by {h}")),
    "still": (("holds {o}", "hold {o}", "is held by {h}"), ("touches {o}", "touch {o}", "is touched by {h}")),
}
_INTERACTION_MOTIONS = {"hand": ("still", "left", "right", "up", "down"), "person": ("still", "left", "right")}

_OPENINGS = ("", "", "", "in this video, ", "in the video, ", "here, ", "in this clip, ")
# {0}, {1}, {2}: the clauses in the order of their time windows.
_JOIN_TOGETHER = {
    1: ("{0}",),
    2: ("{0}, while {1}", "{0} as {1}", "{0} and {1}", "while {1}, {0}", "{0}. {1}"),
    3: ("{0}, {1}, and {2}", "{0} and {1}, while {2}", "{0}, while {1} and {2}"),
}
_JOIN_SEQUENCE = {
    2: ("{0}, then {1}", "first {0}, then {1}", "{0}, and then {1}", "{0}. after that, {1}"),
    3: ("{0}, then {1}, and finally {2}", "first {0}, then {1}, and then {2}", "{0}. then {1}, and then {2}"),
}


@dataclass
class Entity:
    """A caption phrase (`phrase_index` >= 0) or a distractor (-1): one kind, colour and motion, `count` instances."""

    kind: str
    colour: str
    size: str  # "small" or "large": the size at the start of the clip
    count: int
    motion: str
    side: str = ""  # enters/leaves: the frame edge; hides: the side it starts on
    window: tuple[int, int] = (0, 0)  # native frames over which the motion happens
    skin: int = 0  # humans: index into SKIN_TONES
    target: int = -1  # humans acting on an object: that object's entity index
    in_caption: bool = True
    phrase_index: int = -1  # set when the caption is written
    phrase: str = ""


@dataclass
class Instance:
    """One drawn object: its entity, its drawn size at scale 1.0, and its track over every native frame."""

    object_id: int
    entity: int
    width: int
    height: int
    x: np.ndarray  # centre, float pixels, one value per native frame
    y: np.ndarray
    scale: np.ndarray
    z: float  # drawing order: larger is nearer


@dataclass
class Scene:
    entities: list[Entity]
    instances: list[Instance]
    occluder: tuple[int, int] | None  # [x0, x1) of a full-height panel drawn in front of everything
    occluder_noun: str
    caption: str
    tagged_caption: str
    phrases: list[str]
    schedule: str  # "together" (clauses overlap in time) or "sequence" (one after another)
    clauses: list[dict] = field(default_factory=list)


class Infeasible(Exception):
    """This draw of a scene cannot be laid out in the frame; the caller draws again."""


# ---------------------------------------------------------------------------------------------- text


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def canonical_description(kind: str, colour: str, size: str) -> str:
    """The canonical noun phrase of one instance, as an image captioner would name it: "a small red cup"."""
    spec = KINDS[kind]
    if spec.is_human:
        return f"a {kind} in {article(colour)} {colour} {spec.garment}"
    return f"{article(size)} {size} {colour} {kind}"


def canonical_action(entity: Entity, entities: list[Entity]) -> str:
    if entity.target >= 0:
        target = entities[entity.target]
        return INTERACTION_ACTIONS[entity.motion].format(o=canonical_description(target.kind, target.colour, target.size))
    return ACTIONS[entity.motion].format(side=entity.side)


def _noun_phrase(entity: Entity, say_size: bool, rng: np.random.Generator) -> str:
    spec = KINDS[entity.kind]
    choice = int(rng.integers(len(spec.nouns)))
    if spec.is_human:
        if entity.count == 1:
            return f"{article(spec.nouns[choice])} {spec.nouns[choice]} in {article(entity.colour)} {entity.colour} {spec.garment}"
        return f"{COUNT_WORDS[entity.count]} {spec.plurals[choice]} in {entity.colour} {spec.garment}s"
    words = [entity.colour]
    if say_size:
        words.insert(0, SIZE_WORDS[entity.size][int(rng.integers(2))])
    if entity.count == 1:
        return f"{article(words[0])} {' '.join(words)} {spec.nouns[choice]}"
    return f"{COUNT_WORDS[entity.count]} {' '.join(words)} {spec.plurals[choice]}"


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _clause_segments(clause: dict, entities: list[Entity], wall: str, rng: np.random.Generator) -> list[str | int]:
    """A clause as text pieces; an int stands for that entity's phrase."""
    members = clause["entities"]
    if clause["type"] == "interaction":
        human, obj = members
        active_sing, active_plural, passive = _pick(rng, _INTERACTION_PHRASES[entities[obj].motion])
        if rng.random() < 0.3:
            before, after = passive.split("{h}")
            return [obj, " " + before, human, after]
        template = active_sing if entities[human].count == 1 else active_plural
        before, after = template.split("{o}")
        return [human, " " + before, obj, after]
    first = entities[members[0]]
    if clause["type"] == "pair":  # kind-specific verbs ("rolls", "walks") may not suit the other member
        options = _MOTION_PHRASES[first.motion]
    else:
        options = _KIND_MOTION_PHRASES.get((first.kind, first.motion), _MOTION_PHRASES[first.motion])
    singular, plural = _pick(rng, options)
    plural_subject = clause["type"] == "pair" or first.count > 1
    verb = (plural if plural_subject else singular).format(side=first.side, wall=wall)
    if clause["type"] == "pair":
        return [members[0], " and ", members[1], " " + verb]
    return [members[0], " " + verb]


def _join(template: str, clauses: list[list[str | int]]) -> list[str | int]:
    pieces: list[str | int] = []
    rest = template
    while "{" in rest:
        head, tail = rest.split("{", 1)
        number, rest = tail.split("}", 1)
        pieces.append(head)
        pieces.extend(clauses[int(number)])
    pieces.append(rest)
    return pieces


def build_caption(scene_clauses: list[dict], entities: list[Entity], schedule: str, wall: str,
                  rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """Caption, tagged caption (`<p>phrase</p>`) and phrases in order of appearance; sets each entity's phrase_index."""
    texts = {}
    for index in sorted({i for clause in scene_clauses for i in clause["entities"]}):
        entity = entities[index]
        needs_size = any(
            other is not entity and other.kind == entity.kind and other.colour == entity.colour for other in entities
        )
        say_size = entity.motion not in ("grows", "shrinks") and (needs_size or rng.random() < 0.4)
        texts[index] = _noun_phrase(entity, say_size, rng)
    segments = [_clause_segments(clause, entities, wall, rng) for clause in scene_clauses]
    joins = _JOIN_SEQUENCE if schedule == "sequence" else _JOIN_TOGETHER
    pieces = [_pick(rng, _OPENINGS)] + _join(_pick(rng, joins[len(segments)]), segments) + ["."]
    plain, tagged, phrases = [], [], []
    for piece in pieces:
        if isinstance(piece, int):
            if entities[piece].phrase_index < 0:
                entities[piece].phrase_index = len(phrases)
                entities[piece].phrase = texts[piece]
                phrases.append(texts[piece])
            plain.append(texts[piece])
            tagged.append(f"<p>{texts[piece]}</p>")
        else:
            plain.append(piece)
            tagged.append(piece)
    return "".join(plain), "".join(tagged), phrases


# ---------------------------------------------------------------------------------------------- entities


def _choose_kind(rng: np.random.Generator, human_share: float) -> str:
    if rng.random() < human_share:
        return "hand" if rng.random() < 0.6 else "person"
    return _pick(rng, OBJECT_KINDS)


def _free_colour(rng: np.random.Generator, kind: str, taken: set[tuple[str, str]]) -> str:
    free = [c for c in COLOURS if (kind, c) not in taken]
    if not free:
        raise Infeasible(f"every colour of {kind} is taken")
    return _pick(rng, tuple(free))


def _count_for(rng: np.random.Generator, kind: str) -> int:
    if not KINDS[kind].plurals:
        return 1
    roll = rng.random()
    return 3 if roll < 0.05 and kind != "hand" else 2 if roll < 0.25 else 1


def _size_for(rng: np.random.Generator, motion: str, count: int) -> str:
    if motion == "grows" or count >= 3:
        return "small"
    if motion == "shrinks":
        return "large"
    return _pick(rng, ("small", "large"))


def _sample_clauses(rng: np.random.Generator, sequence: bool, taken: set[tuple[str, str]]) -> tuple[list[dict], list[Entity]]:
    n_phrases = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    partitions = {1: ([1],), 2: ([2], [1, 1]), 3: ([1, 2], [2, 1], [1, 1, 1]), 4: ([2, 2], [1, 1, 2], [1, 2, 1], [2, 1, 1])}
    sizes = _pick(rng, partitions[n_phrases])
    if sequence and len(sizes) == 1:
        sequence = False
    entities: list[Entity] = []
    clauses: list[dict] = []

    def add(kind: str, motion: str, count: int = 1, size: str | None = None) -> int:
        colour = _free_colour(rng, kind, taken)
        taken.add((kind, colour))
        entity = Entity(kind, colour, size or _size_for(rng, motion, count), count, motion,
                        skin=int(rng.integers(len(SKIN_TONES))))
        if motion in ("enters", "leaves", "hides"):
            entity.side = _pick(rng, ("left", "right"))
        entities.append(entity)
        return len(entities) - 1

    for size in sizes:
        if size == 2 and rng.random() < 0.6:
            human_kind = "hand" if rng.random() < 0.65 else "person"
            motions = tuple(m for m in _INTERACTION_MOTIONS[human_kind] if not (sequence and m == "still"))
            motion = _pick(rng, motions)
            hands = 2 if human_kind == "hand" and rng.random() < 0.25 else 1
            obj_kind = _pick(rng, OBJECT_KINDS)
            obj = add(obj_kind, motion, 1, _pick(rng, ("small", "large")))
            human = add(human_kind, motion, hands, "large")
            entities[human].target = obj
            clauses.append({"type": "interaction", "entities": [human, obj], "motion": motion})
        elif size == 2:
            first_kind, second_kind = _choose_kind(rng, 0.15), _choose_kind(rng, 0.15)
            shared = [m for m in KINDS[first_kind].motions if m in KINDS[second_kind].motions and m != "hides"]
            motion = _pick(rng, tuple(m for m in shared if not (sequence and m == "still")))
            a = add(first_kind, motion)
            b = add(second_kind, motion)
            entities[b].side = entities[a].side
            clauses.append({"type": "pair", "entities": [a, b], "motion": motion})
        else:
            kind = _choose_kind(rng, 0.3)
            motion = _pick(rng, tuple(m for m in KINDS[kind].motions if not (sequence and m == "still")))
            clauses.append({"type": "single", "entities": [add(kind, motion, _count_for(rng, kind))], "motion": motion})
    return clauses, entities


def _sample_distractors(rng: np.random.Generator, entities: list[Entity], taken: set[tuple[str, str]]) -> None:
    for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))):
        lookalikes = [e for e in entities if e.in_caption and not KINDS[e.kind].is_human and e.count == 1
                      and e.motion not in ("grows", "shrinks")]
        if lookalikes and rng.random() < 0.25:
            # same kind and colour as a caption object, other size: the caption then has to say the size
            twin = _pick(rng, tuple(lookalikes))
            kind, colour = twin.kind, twin.colour
            size = "small" if twin.size == "large" else "large"
        else:
            kind = _choose_kind(rng, 0.15)
            colour = _free_colour(rng, kind, taken)
            size = _pick(rng, ("small", "large"))
        taken.add((kind, colour))
        motion = _pick(rng, tuple(m for m in ("still", "still", "left", "right", "up", "down") if m in KINDS[kind].motions))
        entities.append(Entity(kind, colour, size, 1, motion, skin=int(rng.integers(len(SKIN_TONES))), in_caption=False))


# ---------------------------------------------------------------------------------------------- geometry


@dataclass
class _Member:
    entity: int
    width: int  # drawn size at scale 1.0
    height: int
    dx: float  # centre offset from the group centre at scale 1.0
    dy: float


def _drawn_size(kind: str, frame_height: int) -> tuple[int, int]:
    spec = KINDS[kind]
    height = spec.height * frame_height
    return max(3, round(height * spec.aspect)), max(3, round(height))


def _single_members(index: int, entity: Entity, frame_height: int) -> list[_Member]:
    width, height = _drawn_size(entity.kind, frame_height)
    scale = SIZE_SCALE[entity.size] if entity.motion not in ("grows", "shrinks") else 1.0
    gap = 0.25 * max(width, height) * scale
    column = entity.motion in HORIZONTAL_MOTIONS  # a column moves sideways together, a row up and down
    step = (height if column else width) * scale + gap
    members = []
    for i in range(entity.count):
        offset = (i - (entity.count - 1) / 2) * step
        members.append(_Member(index, width, height, 0.0 if column else offset, offset if column else 0.0))
    return members


def _interaction_members(human: int, obj: int, entities: list[Entity], frame_height: int, rng: np.random.Generator) -> list[_Member]:
    """The object at the group centre, the human beside it on the side it pushes from."""
    o, h = entities[obj], entities[human]
    ow, oh = _drawn_size(o.kind, frame_height)
    hw, hh = _drawn_size(h.kind, frame_height)
    obj_scale, human_scale = SIZE_SCALE[o.size], SIZE_SCALE[h.size]
    members = [_Member(obj, ow, oh, 0.0, 0.0)]
    if h.motion == "left":
        sides = [1.0]
    elif h.motion == "right":
        sides = [-1.0]
    else:
        sides = [-1.0, 1.0] if h.count == 2 else [_pick(rng, (-1.0, 1.0))]
    if h.count == 2 and len(sides) == 1:
        sides = [-1.0, 1.0]
    overlap = 0.3 if h.kind == "hand" else 0.1
    for side in sides:
        dx = side * (ow * obj_scale / 2 + hw * human_scale * (0.5 - overlap))
        dy = -0.1 * hh * human_scale if h.kind == "person" else 0.0
        members.append(_Member(human, hw, hh, dx, dy))
    return members


def _footprint(members: list[_Member], entities: list[Entity], scale: float) -> tuple[float, float, float, float]:
    """Group box (x0, y0, x1, y1) around the group centre at `scale` (each member at its own size)."""
    boxes = []
    for m in members:
        s = scale * _member_scale(entities[m.entity])
        boxes.append((m.dx * scale - m.width * s / 2, m.dy * scale - m.height * s / 2,
                      m.dx * scale + m.width * s / 2, m.dy * scale + m.height * s / 2))
    array = np.array(boxes)
    return float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max())


def _member_scale(entity: Entity) -> float:
    """The scale a member is drawn at when its group track is at scale 1.0."""
    return 1.0 if entity.motion in ("grows", "shrinks") else SIZE_SCALE[entity.size]


def _ease(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def keyframe_track(n_frames: int, keys: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, scale) per frame from keyframes (frame, x, y, scale): eased between keys, held outside them."""
    frames = np.arange(n_frames, dtype=np.float64)
    values = np.empty((3, n_frames))
    values[:] = np.array(keys[0][1:])[:, None]
    for (f0, *a), (f1, *b) in zip(keys, keys[1:]):
        t = _ease(np.clip((frames - f0) / max(f1 - f0, 1e-9), 0.0, 1.0))
        inside = frames >= f0
        for axis in range(3):
            values[axis, inside] = a[axis] + (b[axis] - a[axis]) * t[inside]
    return values[0], values[1], values[2]


def _track_keys(entity: Entity, box: tuple[float, float, float, float], width: int, height: int,
                occluder: tuple[int, int] | None, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Keyframes of a group track; `box` is the group footprint around its centre at the largest scale."""
    x0, y0, x1, y1 = box
    lo_x, hi_x = -x0, width - x1  # centre range that keeps the whole group inside the frame
    lo_y, hi_y = -y0, height - y1
    if hi_x < lo_x or hi_y < lo_y:
        raise Infeasible("group larger than the frame")
    f0, f1 = entity.window
    y = rng.uniform(lo_y, hi_y)
    x = rng.uniform(lo_x, hi_x)
    motion = entity.motion
    if motion == "still":
        return [(0, x, y, 1.0)]
    if motion in ("grows", "shrinks"):
        small, large = GROW_SCALES
        start, end = (small, large) if motion == "grows" else (large, small)
        return [(f0, x, y, start), (f1, x, y, end)]
    if motion in ("left", "right", "up", "down"):
        lo, hi = (lo_x, hi_x) if motion in ("left", "right") else (lo_y, hi_y)
        span = hi - lo
        if span < 0.25 * (width if motion in ("left", "right") else height):
            raise Infeasible(f"no room to move {motion}")
        distance = rng.uniform(0.5, 0.95) * span
        start = rng.uniform(lo + distance, hi) if motion in ("left", "up") else rng.uniform(lo, hi - distance)
        end = start - distance if motion in ("left", "up") else start + distance
        if motion in ("left", "right"):
            return [(f0, start, y, 1.0), (f1, end, y, 1.0)]
        return [(f0, x, start, 1.0), (f1, x, end, 1.0)]
    outside = -x1 - 1.0 if entity.side == "left" else width - x0 + 1.0
    if motion == "enters":
        inside = rng.uniform(lo_x + 0.3 * (hi_x - lo_x), hi_x) if entity.side == "left" else rng.uniform(lo_x, hi_x - 0.3 * (hi_x - lo_x))
        return [(f0, outside, y, 1.0), (f1, inside, y, 1.0)]
    if motion == "leaves":
        return [(f0, x, y, 1.0), (f1, outside, y, 1.0)]
    assert motion == "hides" and occluder is not None
    ox0, ox1 = occluder
    if x1 - x0 > ox1 - ox0 - 2:
        raise Infeasible("group too wide to hide behind the occluder")
    behind = (ox0 + ox1) / 2 - (x0 + x1) / 2
    left_room, right_room = (lo_x, ox0 - x1 - 1), (ox1 - x0 + 1, hi_x)
    start_room = left_room if entity.side == "left" else right_room
    if start_room[1] < start_room[0]:
        raise Infeasible("no room beside the occluder")
    end_rooms = [r for r in (left_room, right_room) if r[1] >= r[0]]
    end_room = _pick(rng, tuple(end_rooms))
    start, end = rng.uniform(*start_room), rng.uniform(*end_room)
    fa, fb = f0 + 0.35 * (f1 - f0), f0 + 0.65 * (f1 - f0)
    return [(f0, start, y, 1.0), (fa, behind, y, 1.0), (fb, behind, y, 1.0), (f1, end, y, 1.0)]


def _track_boxes(box: tuple[float, float, float, float], track: tuple[np.ndarray, np.ndarray, np.ndarray],
                 frames: np.ndarray) -> np.ndarray:
    x, y, s = (t[frames] for t in track)
    return np.stack([x + box[0] * s, y + box[1] * s, x + box[2] * s, y + box[3] * s], axis=1)


def _track_penalty(boxes: np.ndarray, placed: list[np.ndarray], occluder: tuple[int, int] | None, motion: str) -> float:
    """How badly a candidate track overlaps the groups already placed (and the occluder, unless it hides)."""
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 1) * np.maximum(boxes[:, 3] - boxes[:, 1], 1)
    worst = 0.0
    for other in placed:
        iw = np.clip(np.minimum(boxes[:, 2], other[:, 2]) - np.maximum(boxes[:, 0], other[:, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[:, 3], other[:, 3]) - np.maximum(boxes[:, 1], other[:, 1]), 0, None)
        other_area = np.maximum(other[:, 2] - other[:, 0], 1) * np.maximum(other[:, 3] - other[:, 1], 1)
        worst = max(worst, float(np.max(iw * ih / np.minimum(area, other_area))))
    if occluder is not None and motion != "hides":
        covered = np.clip(np.minimum(boxes[:, 2], occluder[1]) - np.maximum(boxes[:, 0], occluder[0]), 0, None)
        worst = max(worst, float(np.mean(covered / np.maximum(boxes[:, 2] - boxes[:, 0], 1))))
    return worst


def _place_occluder(width: int, hide_widths: list[float], rng: np.random.Generator) -> tuple[int, int]:
    panel = int(np.ceil(max([0.2 * width] + [w + 6 for w in hide_widths])))
    centre = rng.uniform(0.35 * width, 0.65 * width)
    x0 = int(round(centre - panel / 2))
    return max(0, x0), min(width, x0 + panel)


# ---------------------------------------------------------------------------------------------- scene


def _windows(n_clauses: int, schedule: str, n_frames: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    last = n_frames - 1
    if schedule == "sequence":
        edges = np.linspace(0.04, 0.96, n_clauses + 1)
        return [(int(round(a * last)), int(round(b * last))) for a, b in zip(edges, edges[1:])]
    return [(int(round(rng.uniform(0.04, 0.2) * last)), int(round(rng.uniform(0.8, 0.96) * last))) for _ in range(n_clauses)]


def sample_scene(rng: np.random.Generator, width: int, height: int, n_frames: int, check_frames: np.ndarray) -> Scene:
    """Draw one scene: entities, their tracks over `n_frames` native frames, occluder and caption.

    `check_frames` are the frames on which overlaps are checked (the annotated ones). Raises
    `Infeasible` when this draw does not fit the frame; the caller draws again with the same rng.
    """
    taken: set[tuple[str, str]] = set()
    sequence = rng.random() < 0.35
    clauses, entities = _sample_clauses(rng, sequence, taken)
    schedule = "sequence" if sequence and len(clauses) > 1 else "together"
    for clause, window in zip(clauses, _windows(len(clauses), schedule, n_frames, rng)):
        for index in clause["entities"]:
            entities[index].window = window
    _sample_distractors(rng, entities, taken)
    for entity in entities:
        if not entity.in_caption:
            entity.window = _windows(1, "together", n_frames, rng)[0]

    groups: list[tuple[int, list[_Member]]] = []  # (entity that carries the motion, members)
    grouped: set[int] = set()
    for clause in clauses:
        if clause["type"] == "interaction":
            human, obj = clause["entities"]
            groups.append((obj, _interaction_members(human, obj, entities, height, rng)))
            grouped.update((human, obj))
    for index, entity in enumerate(entities):
        if index not in grouped:
            groups.append((index, _single_members(index, entity, height)))

    boxes = [_footprint(members, entities, GROW_SCALES[1] if entities[lead].motion in ("grows", "shrinks") else 1.0)
             for lead, members in groups]
    hide_widths = [b[2] - b[0] for (lead, _), b in zip(groups, boxes) if entities[lead].motion == "hides"]
    occluder = _place_occluder(width, hide_widths, rng) if hide_widths or rng.random() < 0.25 else None

    placed: list[np.ndarray] = []
    instances: list[Instance] = []
    order = sorted(range(len(groups)), key=lambda g: not entities[groups[g][0]].in_caption)  # caption groups first
    depths = rng.permutation(len(groups))
    for g in order:
        lead, members = groups[g]
        best = None
        for _ in range(24):
            keys = _track_keys(entities[lead], boxes[g], width, height, occluder, rng)
            track = keyframe_track(n_frames, keys)
            penalty = _track_penalty(_track_boxes(boxes[g], track, check_frames), placed, occluder, entities[lead].motion)
            if best is None or penalty < best[0]:
                best = (penalty, track)
            if penalty < 0.15:
                break
        assert best is not None
        track = best[1]
        placed.append(_track_boxes(boxes[g], track, check_frames))
        x, y, s = track
        for member in members:
            entity = entities[member.entity]
            # a hand is in front of what it holds, a person's body behind it
            z = float(depths[g]) + (0.0 if entity.target < 0 else 0.5 if entity.kind == "hand" else -0.5)
            instances.append(Instance(len(instances), member.entity, member.width, member.height,
                                      x + member.dx * s, y + member.dy * s, s * _member_scale(entity), z))

    wall = _pick(rng, OCCLUDER_NOUNS)
    caption, tagged, phrases = build_caption(clauses, entities, schedule, wall, rng)
    return Scene(entities, instances, occluder, wall, caption, tagged, phrases, schedule, clauses)
