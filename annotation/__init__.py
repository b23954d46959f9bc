"""The three-stage automatic annotator that builds HowToGround1M-format datasets (grove_spec.md section 5).

stage1.py (frame-level grounded captions; backends simulated, glamm.py (the paper's GLaMM), florence2.py,
or any class by import path), svo.py (clauses from frame captions), stage2.py (video-level tagged caption), stage3.py (frame
phrases classified into video phrases: the boxes' labels), engines.py (vLLM / transformers LLMs),
shards.py (the idempotent shard runner and merge), quality.py (scores against synthetic truth),
longvideo.py (clip -> segment -> video caption hierarchy), cli.py (`grove annotate`).
No Dagster or MLflow here; orchestration calls plan_shards / run_stage / merge_shards.
"""
