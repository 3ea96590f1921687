"""pgpig-data: raw person-image data sets → keypoint tables → paired training shards."""

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]
