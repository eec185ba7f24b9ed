"""A stand-in for the Hugging Face Hub's HTTP API, for push tests (the Hub is unreachable here).

It answers the calls one `Dataset.push_to_hub` + `create_commit` + `create_tag` makes, the model
repo's `create_branch`, `create_commit(revision=BRANCH)`, `list_repo_files(revision=BRANCH)` and
`hf_hub_download(revision=BRANCH)`, and `list_repo_refs` (branches and tags, each with the commit
it points at), `repo_info`, `whoami` (401 for any token but TOKEN); keeps every committed file in
memory per branch (LFS uploads included), the visibility each `create_repo` asked for (None: the
Hub's default), dataset and model repos apart, and records each request, so a test can check
exactly what would have been uploaded, as what, to which branch, and that no token leaked into the
content. Installed with `huggingface_hub.set_client_factory` and an `httpx2.MockTransport`. Facts
behind it: huggingface_hub 2.4 (hf_api.py: create_repo sends "visibility", not "private", and
leaves it out for private=None; list_repo_refs needs branches, converts and tags, each with name,
ref and targetCommit; create_branch POSTs /api/{type}s/{repo}/branch/{name} with an optional
"startingPoint" (a branch or a commit), 409 when it exists; a commit, preupload, tree or resolve
names its revision in the URL, quoted; lfs.py: an LFS batch object without "actions" is already
stored, so its bytes are not sent again, as the Hub answers for content it has). A commit's id here
is a hash of the branch's files after it (two branches with the same files share it, where git's
would differ by their parents).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import unquote

import httpx2

ENTRY_NOT_FOUND = {"X-Error-Code": "EntryNotFound"}
REVISION_NOT_FOUND = {"X-Error-Code": "RevisionNotFound"}
LFS_SUFFIXES = (".parquet", ".safetensors", ".bin")  # what the Hub stores in LFS here (it decides on size and content)


TOKEN = "hf_testSECRETtoken0123456789"  # what tests put in HF_TOKEN; it must never leak


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # dataset repo id -> path -> content
        self.models: dict[str, dict[str, bytes]] = {}  # model repo id -> path -> content (its main branch)
        # ("datasets" or "models", repo id) -> branch -> path -> content; "main" is the dict above
        self.branches: dict[tuple[str, str], dict[str, dict[str, bytes]]] = {}
        self.snapshots: dict[str, dict[str, bytes]] = {}  # commit id -> the files then (create_branch's start)
        self.visibility: dict[str, str | None] = {}  # repo id -> "private", "public" or None (the Hub's default)
        self.tags: dict[str, list[str]] = {}
        self.tag_commits: dict[str, dict[str, str]] = {}  # repo id -> tag -> commit sha
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[httpx2.Request] = []
        self.commits = 0

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        body = request.read()
        if method == "PUT" and path.startswith("/lfs-upload/"):
            oid = path.rsplit("/", 1)[1]
            self.lfs[oid] = body
            return httpx2.Response(200)
        if path == "/api/repos/create" and method == "POST":
            spec = json.loads(body)
            repo = f"{spec.get('organization') or 'user'}/{spec['name']}" if "/" not in spec["name"] else spec["name"]
            model = spec.get("type") in (None, "model")
            store = self.models if model else self.repos
            url = f"https://huggingface.co/{repo}" if model else f"https://huggingface.co/datasets/{repo}"
            if repo in store:
                return httpx2.Response(409, json={"error": "You already created this repo", "url": url})
            store[repo] = {".gitattributes": b""}
            self.branches[("models" if model else "datasets", repo)] = {"main": store[repo]}
            self._snapshot(store[repo])
            self.visibility[repo] = spec.get("visibility")
            return httpx2.Response(200, json={"url": url, "name": repo})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if path == "/api/whoami-v2":
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return httpx2.Response(401, json={"error": "Invalid credentials in Authorization header"})
            return httpx2.Response(200, json={"name": "user", "orgs": [{"name": "org"}], "auth": {}})
        routed = self._route(path)
        if routed is None:
            return httpx2.Response(404, json={"error": f"stub does not know {method} {path}"})
        match, store, kind = routed
        repo, rest = match.group(1), match.group(2) or ""
        files = store.get(repo)
        if files is None:
            return httpx2.Response(
                404, json={"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"}
            )
        return self._repo_call(request, repo, self.branches[(kind, repo)], rest, body, kind)

    def _route(self, path: str):
        """(match of repo id and the rest, the repos it is among, "datasets" or "models"), or None."""
        for pattern, store, kind in (
            (r"^/(?:api/)?datasets/([^/]+/[^/]+?)(?:\.git)?(/.*)?$", self.repos, "datasets"),
            (r"^/api/models/([^/]+/[^/]+?)(/.*)?$", self.models, "models"),
            (r"^/([^/]+/[^/]+?)(?:\.git)?(/(?:info|resolve)/.*)$", self.models, "models"),
        ):
            match = re.match(pattern, path)
            if match:
                return match, store, kind
        return None

    def _repo_call(self, request, repo, branches, rest, body, kind="datasets"):
        method = request.method
        if rest == "/info/lfs/objects/batch":
            objects = json.loads(body)["objects"]
            return httpx2.Response(200, json={"objects": [self._lfs_action(o) for o in objects]})
        if rest.startswith("/preupload/"):
            listed = json.loads(body)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        # "lfs" for data and weight files: with "regular" the commit would need the
                        # temporary shard that datasets deletes after the preupload.
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                            "shouldIgnore": False,
                        }
                        for f in listed
                    ]
                },
            )
        if rest.startswith("/branch/") and method == "POST":
            return self._create_branch(branches, unquote(rest.split("/", 2)[2]), json.loads(body or b"{}"))
        if rest.startswith("/commit/"):
            files = branches.get(unquote(rest.split("/", 2)[2]))
            if files is None:
                return httpx2.Response(404, json={"error": "Invalid rev id"}, headers=REVISION_NOT_FOUND)
            return self._commit(repo, files, body, kind)
        files = branches["main"]
        if rest.startswith("/tag/"):
            tag = json.loads(body)["tag"]
            if tag in self.tags.get(repo, []):
                return httpx2.Response(409, json={"error": "tag exists"})
            self.tags.setdefault(repo, []).append(tag)
            self.tag_commits.setdefault(repo, {})[tag] = self._sha(files)
            return httpx2.Response(200, json={})
        if rest == "/refs":
            refs = {
                "branches": [
                    {"name": name, "ref": f"refs/heads/{name}", "targetCommit": self._sha(content)}
                    for name, content in branches.items()
                ],
                "converts": [],
                "tags": [
                    {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit}
                    for tag, commit in self.tag_commits.get(repo, {}).items()
                ],
                "pullRequests": [],
            }
            return httpx2.Response(200, json=refs)
        if rest.startswith(("/revision/", "/tree/", "/resolve/", "/paths-info/")):
            revision = unquote(rest.split("/", 3)[2])
            files = self._revision(branches, revision)
            if files is None:
                return httpx2.Response(404, json={"error": "Invalid rev id"}, headers=REVISION_NOT_FOUND)
        if rest == "" or rest.startswith("/revision/"):
            siblings = [{"rfilename": p} for p in sorted(files)]
            private = self.visibility.get(repo) == "private"
            return httpx2.Response(
                200, json={"id": repo, "sha": self._sha(files), "siblings": siblings, "private": private, "tags": []}
            )
        if rest.startswith("/tree/"):
            prefix = rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
            recursive = request.url.params.get("recursive") in ("true", "True")
            entries = self._tree(files, prefix, recursive)
            if prefix and not entries:
                return httpx2.Response(404, json={"error": "Entry not found"}, headers=ENTRY_NOT_FOUND)
            return httpx2.Response(200, json=entries)
        if rest.startswith("/paths-info/"):
            return httpx2.Response(200, json=[])
        if rest.startswith("/resolve/"):
            name = rest.split("/", 3)[3]
            if name not in files:
                return httpx2.Response(404, json={"error": "Entry not found"}, headers=ENTRY_NOT_FOUND)
            content = files[name]
            headers = {
                "X-Repo-Commit": self._sha(files),
                "ETag": hashlib.sha256(content).hexdigest(),
                "Content-Length": str(len(content)),
            }
            return httpx2.Response(200, content=b"" if method == "HEAD" else content, headers=headers)
        return httpx2.Response(404, json={"error": f"stub does not know {method} {rest}"})

    def _lfs_action(self, obj: dict) -> dict:
        """Where to upload an LFS object; none for content the Hub already has (the client then sends nothing)."""
        if obj["oid"] in self.lfs:
            return {"oid": obj["oid"], "size": obj["size"]}
        upload = {"upload": {"href": f"https://huggingface.co/lfs-upload/{obj['oid']}"}}
        return {"oid": obj["oid"], "size": obj["size"], "actions": upload}

    def _create_branch(self, branches, name, spec):
        if name in branches:
            return httpx2.Response(409, json={"error": f"Reference already exists: refs/heads/{name}"})
        start = self._revision(branches, spec.get("startingPoint") or "main")
        if start is None:
            return httpx2.Response(404, json={"error": "Invalid rev id"}, headers=REVISION_NOT_FOUND)
        branches[name] = dict(start)
        return httpx2.Response(200, json={})

    def _revision(self, branches, revision):
        """The files of a branch, or of a commit by its id; None for neither."""
        if revision in branches:
            return branches[revision]
        return self.snapshots.get(revision)

    def _commit(self, repo, files, body, kind="datasets"):
        for line in body.decode().splitlines():
            op = json.loads(line)
            value = op["value"]
            if op["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif op["key"] == "lfsFile":
                files[value["path"]] = self.lfs[value["oid"]]
            elif op["key"] == "deletedFile":
                files.pop(value["path"], None)
        self.commits += 1
        sha = self._snapshot(files)
        where = f"datasets/{repo}" if kind == "datasets" else repo
        return httpx2.Response(
            200, json={"commitUrl": f"https://huggingface.co/{where}/commit/{sha}", "commitOid": sha}
        )

    def _snapshot(self, files) -> str:
        sha = self._sha(files)
        self.snapshots[sha] = dict(files)
        return sha

    @staticmethod
    def _sha(files) -> str:
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        return digest.hexdigest()

    @staticmethod
    def _tree(files, prefix, recursive=False):
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for name, content in sorted(files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1 :] if prefix else name
            if "/" in rest:
                parts = rest.split("/")[:-1] if recursive else rest.split("/")[:1]
                base = prefix + "/" if prefix else ""
                folders.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
            if "/" not in rest or recursive:
                entries.append(
                    {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                )
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        return entries
