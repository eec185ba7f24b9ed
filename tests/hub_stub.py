"""A stand-in for the Hugging Face Hub's HTTP API, for push tests (the Hub is unreachable here).

It answers the calls one `Dataset.push_to_hub` + `create_commit` + `create_tag` makes, keeps
every committed file in memory (LFS uploads included), and records each request, so a test
can check exactly what would have been uploaded and that no token leaked into the content.
Installed with `huggingface_hub.set_client_factory` and an `httpx2.MockTransport`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx2

ENTRY_NOT_FOUND = {"X-Error-Code": "EntryNotFound"}


TOKEN = "hf_testSECRETtoken0123456789"  # what tests put in HF_TOKEN; it must never leak


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> path -> content
        self.tags: dict[str, list[str]] = {}
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
            self.repos.setdefault(repo, {".gitattributes": b""})
            return httpx2.Response(200, json={"url": f"https://huggingface.co/datasets/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if path == "/api/whoami-v2":
            return httpx2.Response(200, json={"name": "user", "auth": {}})
        match = re.match(r"^/(?:api/)?datasets/([^/]+/[^/]+?)(?:\.git)?(/.*)?$", path)
        if not match:
            return httpx2.Response(404, json={"error": f"stub does not know {method} {path}"})
        repo, rest = match.group(1), match.group(2) or ""
        files = self.repos.get(repo)
        if files is None:
            return httpx2.Response(
                404, json={"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"}
            )
        return self._repo_call(request, repo, files, rest, body)

    def _repo_call(self, request, repo, files, rest, body):
        method = request.method
        if rest == "/info/lfs/objects/batch":
            objects = json.loads(body)["objects"]
            return httpx2.Response(
                200,
                json={
                    "objects": [
                        {
                            "oid": o["oid"],
                            "size": o["size"],
                            "actions": {"upload": {"href": f"https://huggingface.co/lfs-upload/{o['oid']}"}},
                        }
                        for o in objects
                    ]
                },
            )
        if rest.startswith("/preupload/"):
            listed = json.loads(body)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        # "lfs" for data files: with "regular" the commit would need the temporary
                        # shard that datasets deletes after the preupload.
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith(".parquet") else "regular",
                            "shouldIgnore": False,
                        }
                        for f in listed
                    ]
                },
            )
        if rest.startswith("/commit/"):
            return self._commit(repo, files, body)
        if rest.startswith("/tag/"):
            tag = json.loads(body)["tag"]
            if tag in self.tags.get(repo, []):
                return httpx2.Response(409, json={"error": "tag exists"})
            self.tags.setdefault(repo, []).append(tag)
            return httpx2.Response(200, json={})
        if rest == "" or rest.startswith("/revision/"):
            siblings = [{"rfilename": p} for p in sorted(files)]
            return httpx2.Response(
                200, json={"id": repo, "sha": self._sha(files), "siblings": siblings, "private": False, "tags": []}
            )
        if rest.startswith("/tree/"):
            prefix = rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
            entries = self._tree(files, prefix)
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

    def _commit(self, repo, files, body):
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
        sha = self._sha(files)
        return httpx2.Response(
            200, json={"commitUrl": f"https://huggingface.co/datasets/{repo}/commit/{sha}", "commitOid": sha}
        )

    @staticmethod
    def _sha(files) -> str:
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        return digest.hexdigest()

    @staticmethod
    def _tree(files, prefix):
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for name, content in sorted(files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1 :] if prefix else name
            if "/" in rest:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
            else:
                entries.append(
                    {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                )
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        return entries
