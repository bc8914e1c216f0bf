"""Stage `register`: package one category's detector, preprocessing, post-processing and calibrated
threshold as an MLflow pyfunc service model and register it as `anomaly-spotter-<category>`.

The version is tagged with the category, detector kind, training data (DVC hash), git commit, headline
metrics, the network version it wraps (and its `model_md5`) and the `run.<stage>` lineage of that
network; promote it with `anomaly-spotter promote --category <category>`. registry/<category>.json records
what was packaged, with no version number or run id (those differ between runs and stores).
"""

import json
from pathlib import Path

from anomaly_spotter import tracking
from anomaly_spotter.core.thresholds import FALSE_ALARM_KEYS, FIELD_KEYS, served_threshold
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.register import SERVICE_MD5_TAG, service_fingerprint, service_version_metadata
from anomaly_spotter.pipeline.stage import FEEDBACK_TAG, main, parse_args, stage_outputs
from anomaly_spotter.serving.inference import InferenceConfig
from anomaly_spotter.serving.model import log_service_model

DVC_LOCK = Path("dvc.lock")


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    reg = params.registry
    model_dir = paths.model_dir(category)
    out = paths.registered_file(category)
    with stage_outputs(out):
        network = tracking.train_run(category, model_dir / paths.MODEL_FILE)
        image_metrics = json.loads(paths.METRICS_JSON.read_text())["categories"][category]
        thresholds = json.loads(paths.THRESHOLDS_JSON.read_text())
        # a category without defective test images is served with its good-only threshold (served.note)
        served = served_threshold(thresholds, category, reg.threshold)
        if served.note:
            print(f"register {category}: {served.note}")
        detector = load_detector(model_dir / paths.MODEL_FILE)
        kind = detector.kind
        config = InferenceConfig.for_model(
            detector,
            category,
            params.data.image_size,
            served.threshold,
            served.method,
            params.process.image_score,
            params.process.batch_size,
            params.process.region_threshold,
            max_images_per_request=reg.max_images_per_request,
            max_request_megapixels=reg.max_request_megapixels,
            min_image_side=reg.min_image_side,
        )
        headline = {k: image_metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
        headline["f1"] = thresholds[category]["recall_target"].get("f1")
        # what the served threshold does: defects found, and good parts flagged (test and validation goods)
        at_served = thresholds[category][served.method]
        headline |= {k: at_served.get(k) for k in ("precision", "recall", *FALSE_ALARM_KEYS)}
        # and on the field set of reviewed line images, where the category has one (what `promote` gates on)
        headline |= {k: at_served[k] for k in FIELD_KEYS if k in at_served}
        data_hash = tracking.data_dvc_hash(DVC_LOCK, category)
        logged = {**{f"service.{k}": v for k, v in config.to_dict().items()}, "data_dvc_hash": data_hash}
        name = tracking.registered_model_name(category)
        fingerprint = service_fingerprint(config, kind, headline, network["model_md5"], data_hash)
        # what would be registered is what the newest version already is (another category's change
        # reran this stage): no new version, the record as it was
        same = tracking.newest_version_with_tag(name, SERVICE_MD5_TAG, fingerprint)
        with tracking.stage_run("register", category, logged, tracking.model_tags(network)) as run:
            tracking.log_metrics(headline)
            if same is not None:
                version = {"model_version": same}
                tracking.set_run_tags({"reused_version": same})
            else:
                version = log_service_model(model_dir / paths.MODEL_FILE, config, name, kind)
                _tag_new_version(
                    name,
                    version["model_version"],
                    network,
                    config,
                    kind,
                    data_hash,
                    headline,
                    run.info.run_id,
                    fingerprint,
                    served.note,
                )
            tracking.tag_model_version(network, "register", run.info.run_id)
            record = {
                "registered_model": name,
                "detector": kind,
                tracking.MODEL_MD5_TAG: network[tracking.MODEL_MD5_TAG],
                "data_dvc_hash": data_hash,
                **config.to_dict(),
                **headline,
                **({"threshold_note": served.note} if served.note else {}),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
        if same is not None:
            print(
                f"register {category}: unchanged since {name} version {same} (the same network, prepared "
                "data, threshold, settings and metrics): no new version"
            )
            return
        print(
            f"register {category}: {name} version {version['model_version']} "
            f"(promote with: anomaly-spotter promote --category {category}); threshold "
            f"{served.threshold:.4g} ({served.method}): {_rates(headline)}"
        )


def _tag_new_version(
    name: str,
    version: str,
    network: dict,
    config: InferenceConfig,
    kind: str,
    data_hash: str,
    headline: dict,
    run_id: str,
    fingerprint: str,
    note: str | None,
) -> None:
    """A new service version's tags (what it is, its lineage, metrics, fingerprint) and description."""
    commit, dirty = tracking.git_commit()
    # the network version's run.<stage> lineage; none for a model this store has no train run of
    network_ref = tracking.network_ref(network)
    version_tags = (
        tracking.model_version_tags(network["registered_model"], network["model_version"])
        if network_ref
        else {}
    )
    lineage = {k: v for k, v in version_tags.items() if k.startswith("run.")}
    tags, description = service_version_metadata(
        config,
        kind,
        network_ref or f"none in this store (model md5 {network['model_md5']})",
        data_hash,
        commit,
        dirty,
        headline,
    )
    tags |= {**lineage, "run.register": run_id, tracking.MODEL_MD5_TAG: network["model_md5"]}
    # the reviewed line images it was trained and judged with (set for every run of this stage)
    tags[FEEDBACK_TAG] = tracking.RUN_TAGS[FEEDBACK_TAG]
    tags[SERVICE_MD5_TAG] = fingerprint
    if note:
        tags["threshold_note"] = note
    tracking.set_model_version_tags(name, version, tags)
    tracking.set_model_version_description(name, version, description)


def _rates(headline: dict[str, float | None]) -> str:
    """`recall 0.958, precision 0.719, flags 75 % of good test images (50 % of validation goods)`."""

    def show(key: str, percent: bool = False) -> str:
        value = headline.get(key)
        return "-" if value is None else (f"{value:.0%}" if percent else f"{value:.3f}")

    return (
        f"recall {show('recall')}, precision {show('precision')}, flags {show('false_alarm_rate', True)} of "
        f"good test images ({show('val_false_alarm_rate', True)} of validation goods)"
    )


if __name__ == "__main__":
    main("register", run)
