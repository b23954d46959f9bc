"""The GROVE model: config profiles, processor (inputs, answer format), model, losses, freezing.

    from grove.model import GroveConfig, GroveModel
    model = GroveModel.from_config(GroveConfig.tiny())
    batch = model.processor.collate([model.processor(frames, caption, phrases, tagged, boxes)])
    out = model(batch); out.loss.backward()
"""

from grove.model.config import GroveConfig
from grove.model.grove import GroundingResult, GroveModel, GroveOutput
from grove.model.processor import GroveProcessor, TaggedAnswer, batch_to, parse_answer, tag_answer

__all__ = [
    "GroveConfig",
    "GroveModel",
    "GroveOutput",
    "GroundingResult",
    "GroveProcessor",
    "TaggedAnswer",
    "batch_to",
    "parse_answer",
    "tag_answer",
]
