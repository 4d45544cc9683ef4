"""FakeKfpApi: a tiny HTTP server speaking the few KFP v2beta1 REST endpoints that kfp.Client uses
for upload, submit, schedule and run state. No KFP backend exists here, so the real kfp.Client
talks to this over real HTTP; every request body is checked field by field against the real
kfp_server_api model types, and every response is built from those types."""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import itertools
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kfp_server_api
import yaml
from kfp_server_api import models

API = "/apis/v2beta1"
SCALARS = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str}
# int64 fields: typed 'str' in the generated client (proto3 JSON), and the server's protojson
# parser takes a JSON number or a string for them.
INT64_FIELDS = {"max_concurrency", "interval_second"}


def check_fields(data, type_name: str, where: str = "") -> None:
    """Raise ValueError unless ``data`` (decoded JSON) fits the kfp_server_api type ``type_name``."""
    if type_name == "object":
        return
    if type_name in SCALARS:
        expected = (str, int) if where.rsplit(".", 1)[-1] in INT64_FIELDS else SCALARS[type_name]
        if not isinstance(data, expected) or isinstance(data, bool) and type_name != "bool":
            raise ValueError(f"{where}: {data!r} is not {type_name}")
        return
    if type_name.startswith("list["):
        for i, item in enumerate(data):
            check_fields(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        for key, value in data.items():
            check_fields(value, value_type, f"{where}.{key}")
        return
    klass = getattr(models, type_name)
    if hasattr(klass, "allowable_values"):  # an enum
        if data not in klass.allowable_values:
            raise ValueError(f"{where}: {data!r} is not one of {klass.allowable_values}")
        return
    unknown = set(data) - set(klass.attribute_map.values())
    if unknown:
        raise ValueError(f"{where or type_name}: fields {sorted(unknown)} are not in {type_name}")
    for attr, key in klass.attribute_map.items():
        if key in data:
            check_fields(data[key], klass.openapi_types[attr], f"{where}.{key}")


def pipeline_parameters(spec: dict) -> set[str]:
    return set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


class FakeKfpApi:  # no KFP backend exists here
    def __init__(self):
        self.requests: list[dict] = []
        self.pipelines: dict[str, models.V2beta1Pipeline] = {}
        self.versions: dict[str, list[models.V2beta1PipelineVersion]] = {}
        self.specs: dict[str, dict] = {}  # pipeline version id -> pipeline spec
        self.stored: dict[str, dict] = {}  # pipeline version id -> what GET .../versions/{id} returns
        self.unavailable: set[tuple[str, str]] = set()  # (method, path pattern) answered 503, as under load
        self.experiments: dict[str, models.V2beta1Experiment] = {}
        self.runs: dict[str, models.V2beta1Run] = {}
        self.recurring_runs: dict[str, models.V2beta1RecurringRun] = {}
        self._clock = itertools.count()
        self._lock = threading.Lock()
        self._serializer = kfp_server_api.ApiClient()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # --- what tests look at --------------------------------------------------------------------
    def calls(self, method: str, path_pattern: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and re.fullmatch(API + path_pattern, r["path"])]

    def set_run_state(self, run_id: str, state: str) -> None:
        self.runs[run_id].state = state

    # --- server side ---------------------------------------------------------------------------
    def _now(self) -> dt.datetime:  # strictly increasing, so "created_at desc" has one answer
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=next(self._clock))

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def _serve(self, method):
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                request = {
                    "method": method,
                    "path": url.path,
                    "query": query,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type", ""),
                    "raw": body,
                }
                with fake._lock:
                    fake.requests.append(request)
                    try:
                        status, payload = fake._route(request)
                    except ValueError as err:  # what the real server answers for a malformed request
                        status, payload = 400, {"error": str(err), "code": 3, "message": str(err)}
                    except Exception as err:  # a bug in the fake: make it visible to the client
                        status, payload = 500, {"error": repr(err), "code": 13, "message": repr(err)}
                data = json.dumps(fake._serializer.sanitize_for_serialization(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, request: dict):
        method, path, query = request["method"], request["path"][len(API) :], request["query"]
        if any(verb == method and re.fullmatch(pattern, path) for verb, pattern in self.unavailable):
            return 503, {"error": "the API server is unavailable", "code": 14, "message": "unavailable"}
        routes = [
            ("GET", r"/healthz", lambda: models.V2beta1GetHealthzResponse(multi_user=False)),
            ("GET", r"/pipelines", lambda: self._list_pipelines(query)),
            ("POST", r"/pipelines/upload", lambda: self._upload(request, None)),
            ("POST", r"/pipelines/upload_version", lambda: self._upload(request, query["pipelineid"])),
            ("GET", r"/pipelines/([^/]+)/versions", lambda pid: self._list_versions(pid, query)),
            ("GET", r"/pipelines/([^/]+)/versions/([^/]+)", lambda pid, vid: self._get_version(pid, vid)),
            ("GET", r"/experiments", lambda: self._list_experiments(query)),
            ("POST", r"/experiments", lambda: self._create_experiment(request)),
            ("POST", r"/runs", lambda: self._create_run(request)),
            ("GET", r"/runs/([^/:]+)", lambda rid: self.runs.get(rid) or self._missing("run", rid)),
            ("GET", r"/recurringruns", lambda: self._list_recurring(query)),
            ("POST", r"/recurringruns", lambda: self._create_recurring(request)),
            ("DELETE", r"/recurringruns/([^/:]+)", lambda rid: self._delete_recurring(rid)),
        ]
        for verb, pattern, handle in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                result = handle(*match.groups())
                return result if isinstance(result, tuple) else (200, result)
        return 404, {"error": f"no route {method} {path}", "code": 5}

    @staticmethod
    def _missing(kind: str, key: str):
        return 404, {"error": f"{kind} {key} not found", "code": 5, "message": f"{kind} {key} not found"}

    @staticmethod
    def _json(request: dict, type_name: str) -> dict:
        data = json.loads(request["raw"])
        check_fields(data, type_name)
        request["json"] = data
        return data

    @staticmethod
    def _name_filter(query: dict) -> str | None:
        if not query.get("filter"):
            return None
        (predicate,) = json.loads(query["filter"])["predicates"]
        if predicate["key"] != "display_name" or predicate["operation"] not in ("EQUALS", 1):  # name or enum number
            raise ValueError(f"filter {predicate} not supported by the fake")
        return predicate.get("stringValue", predicate.get("string_value"))

    def _page(self, items: list, query: dict) -> tuple[list, str]:
        name = self._name_filter(query)
        items = [i for i in items if name is None or i.display_name == name]
        if query.get("sort_by") == "created_at desc":
            items = sorted(items, key=lambda i: i.created_at, reverse=True)
        start, size = int(query.get("page_token") or 0), int(query.get("page_size") or 10)
        more = start + size < len(items)
        return items[start : start + size], (str(start + size) if more else "")

    # pipelines
    def _list_pipelines(self, query):
        page, token = self._page(list(self.pipelines.values()), query)
        return models.V2beta1ListPipelinesResponse(pipelines=page, total_size=len(page), next_page_token=token)

    def _upload(self, request, pipeline_id):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + request["content_type"].encode() + b"\r\n\r\n" + request["raw"]
        )
        (part,) = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
        spec, *platform = yaml.safe_load_all(part.get_payload(decode=True))  # pipeline spec [+ platform spec]
        request["spec"] = spec
        name = request["query"]["name"]
        if pipeline_id is None:
            if any(p.display_name == name for p in self.pipelines.values()):
                return 409, {"error": f"pipeline {name} already exists", "code": 6}
            pipeline_id = str(uuid.uuid4())
            self.pipelines[pipeline_id] = models.V2beta1Pipeline(
                pipeline_id=pipeline_id, display_name=name, created_at=self._now()
            )
            self.versions[pipeline_id] = []
        elif pipeline_id not in self.pipelines:
            return self._missing("pipeline", pipeline_id)
        if any(v.display_name == name for v in self.versions[pipeline_id]):
            return 409, {"error": f"version {name} already exists", "code": 6}
        version = models.V2beta1PipelineVersion(
            pipeline_id=pipeline_id, pipeline_version_id=str(uuid.uuid4()), display_name=name, created_at=self._now()
        )
        self.versions[pipeline_id].append(version)
        self.specs[version.pipeline_version_id] = spec
        # As the API server stores it (kubeflow/pipelines 2.17, backend/src/apiserver/server/util.go,
        # YamlStringToPipelineSpecStruct): the spec alone, or both under pipeline_spec/platform_spec.
        self.stored[version.pipeline_version_id] = (
            {"pipeline_spec": spec, "platform_spec": platform[0]} if platform else spec
        )
        return self.pipelines[pipeline_id] if request["path"].endswith("/upload") else version

    def _list_versions(self, pipeline_id, query):
        if pipeline_id not in self.pipelines:
            return self._missing("pipeline", pipeline_id)
        page, token = self._page(self.versions[pipeline_id], query)
        return models.V2beta1ListPipelineVersionsResponse(
            pipeline_versions=page, total_size=len(page), next_page_token=token
        )

    def _get_version(self, pipeline_id, version_id):
        found = [v for v in self.versions.get(pipeline_id, []) if v.pipeline_version_id == version_id]
        if not found:
            return self._missing("pipeline version", version_id)
        (version,) = found
        return models.V2beta1PipelineVersion(**{**version.to_dict(), "pipeline_spec": self.stored[version_id]})

    # experiments
    def _list_experiments(self, query):
        page, token = self._page(list(self.experiments.values()), query)
        return models.V2beta1ListExperimentsResponse(experiments=page, total_size=len(page), next_page_token=token)

    def _create_experiment(self, request):
        data = self._json(request, "V2beta1Experiment")
        experiment = models.V2beta1Experiment(
            experiment_id=str(uuid.uuid4()),
            display_name=data["display_name"],
            namespace=data.get("namespace"),
            created_at=self._now(),
        )
        self.experiments[experiment.experiment_id] = experiment
        return experiment

    # runs
    def _spec_of(self, data: dict) -> dict:
        """The pipeline a run or recurring run names; its parameters must be ones the pipeline declares."""
        if data.get("pipeline_spec"):
            spec = data["pipeline_spec"].get("pipeline_spec", data["pipeline_spec"])
        else:
            ref = data["pipeline_version_reference"]
            known = {v.pipeline_version_id for v in self.versions.get(ref["pipeline_id"], [])}
            if ref["pipeline_version_id"] not in known:
                raise ValueError(f"pipeline version {ref} does not exist")
            spec = self.specs[ref["pipeline_version_id"]]
        if data["experiment_id"] not in self.experiments:
            raise ValueError(f"experiment {data['experiment_id']} does not exist")
        undeclared = set(data.get("runtime_config", {}).get("parameters", {})) - pipeline_parameters(spec)
        if undeclared:
            raise ValueError(f"parameters {sorted(undeclared)} are not inputs of the pipeline")
        return spec

    def _create_run(self, request):
        data = self._json(request, "V2beta1Run")
        self._spec_of(data)
        run = models.V2beta1Run(
            run_id=str(uuid.uuid4()),
            created_at=self._now(),
            state="PENDING",
            **{k: data.get(k) for k in ("experiment_id", "display_name")},
        )
        self.runs[run.run_id] = run
        return run

    def _list_recurring(self, query):
        items = [
            r
            for r in self.recurring_runs.values()
            if not query.get("experiment_id") or r.experiment_id == query["experiment_id"]
        ]
        page, token = self._page(items, query)
        return models.V2beta1ListRecurringRunsResponse(recurring_runs=page, total_size=len(page), next_page_token=token)

    def _create_recurring(self, request):
        data = self._json(request, "V2beta1RecurringRun")
        self._spec_of(data)
        cron = (data.get("trigger") or {}).get("cron_schedule", {}).get("cron", "")
        if len(cron.split()) != 6:  # the backend's robfig/cron parser takes seconds first
            raise ValueError(f"cron {cron!r} is not a six-field expression")
        recurring = models.V2beta1RecurringRun(
            recurring_run_id=str(uuid.uuid4()),
            display_name=data["display_name"],
            experiment_id=data["experiment_id"],
            created_at=self._now(),
            mode=data.get("mode"),
            max_concurrency=data.get("max_concurrency"),
            no_catchup=data.get("no_catchup"),
            trigger=models.V2beta1Trigger(cron_schedule=models.V2beta1CronSchedule(cron=cron)),
        )
        self.recurring_runs[recurring.recurring_run_id] = recurring
        return recurring

    def _delete_recurring(self, recurring_run_id):
        if self.recurring_runs.pop(recurring_run_id, None) is None:
            return self._missing("recurring run", recurring_run_id)
        return {}
