"""Every job in one table: its command, config, outputs, metrics and report section.

The report, the end-to-end test and the benchmarks read this table instead of keeping lists of
their own; ``dvc.yaml`` stays DVC's source of truth, and ``tests/test_architecture.py`` fails when
the two disagree (a registered job without a stage, a stage whose ``deps`` miss a module it imports).
Adding a job: its module (``run`` + ``main = hydra_job(name, run)``), ``conf/<name>.yaml``, a
two-line command module ``pipeline/<name>.py``, an entry here and a stage in ``dvc.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    name: str
    module: str  # the module that defines ``run(cfg)`` and ``main``
    config: str  # primary config, conf/<config>.yaml
    title: str = ""
    blurb: str = ""  # one line for the report: what the job shows
    outputs: tuple[str, ...] = ()  # DVC outs, relative to the repo root
    metrics: str | None = None  # DVC metrics file
    visualization: bool = False  # a section of the report with figures from results/<name>/
    # What a user with a 24-image val set would change (conf file -> keys merged into it): the
    # end-to-end test runs the whole pipeline with these.
    smoke: dict = field(default_factory=dict)
    runs_experiment: bool = True  # its stage passes params.yaml's `experiment` (conf/experiment/); not the data jobs

    @property
    def command(self) -> str:
        """The DVC stage's command."""
        return f"python -m pipeline.{self.name}" + (" experiment=${experiment}" if self.runs_experiment else "")


def _viz(name: str, module: str, title: str, blurb: str, smoke: dict) -> Job:
    return Job(name, module, name, title, blurb, outputs=(f"results/{name}",), metrics=f"metrics/{name}.json",
               visualization=True, smoke=smoke)


JOBS: dict[str, Job] = {job.name: job for job in [  # in pipeline order
    Job("download", "pipeline.data.download", "config", "Download", outputs=("data/raw/dataset.zip",),
        metrics="metrics/download.json", runs_experiment=False),
    Job("prepare", "pipeline.data.prepare", "config", "Prepare", outputs=("data/prepared",),
        metrics="metrics/prepare.json", runs_experiment=False),
    Job("train", "pipeline.model.train", "config", "Classifier", outputs=("models/classifier.pt",),
        metrics="metrics/train.json",
        smoke={"conf/train/default.yaml": {"epochs": 2, "batch_size": 16,
                                           "resize": {"start": 48, "full_size_epochs": 1}}}),
    _viz("saliency", "pipeline.explain.saliency", "Class saliency maps",
         "Simonyan et al. 2014, sec. 3.1: max over channels of |dS_y/dx|.",
         {"conf/saliency.yaml": {"saliency": {"views": {"confident": {"min_confidence": 0.0, "n": 1}},
                                              "evaluation": {"n": 8, "steps": 4, "sanity_images": 4}}}}),
    _viz("fooling", "pipeline.explain.fooling", "Fooling images",
         "Correctly classified val images pushed to another class by gradient ascent.",
         {"conf/fooling.yaml": {"fooling": {"images": {"n": None}, "max_iterations": 50}}}),
    _viz("class_viz", "pipeline.explain.class_viz", "Class model visualization",
         "Class-score ascent from noise with jitter, L2, blur and clipping.",
         {"conf/class_viz/default.yaml": {"iterations": 10}}),
    _viz("inversion", "pipeline.explain.inversion", "Feature inversion",
         "Mahendran & Vedaldi 2015: images reconstructed from one layer's features.",
         {"conf/inversion.yaml": {"inversion": {"iterations": 10}}}),
    _viz("deepdream", "pipeline.explain.deepdream", "DeepDream",
         "A layer's activations amplified with jitter and octaves.",
         {"conf/deepdream.yaml": {"deepdream": {"iterations": 2, "max_side": 96, "octaves": 2}}}),
    _viz("features", "pipeline.explain.features", "Feature visualization",
         "Olah et al. 2017: for each stage, images that maximise its most active channels (what each unit "
         "detects); the ratio under each is its activation over the largest any val image gives it.",
         {"conf/features.yaml": {"features": {"iterations": 3, "channels": 2, "val_images": 8}}}),
    Job("report", "pipeline.track.report", "report", "Report", outputs=("report/index.html",)),
]}

VISUALIZATIONS = [job for job in JOBS.values() if job.visualization]
