#!/usr/bin/env python3
"""A local imitation of the Hugging Face Hub for moe-fetch's tests.

Serves the files under --root as dataset REPO at commit COMMIT:
  GET /api/datasets/REPO/revision/REV      -> {"id", "sha"}
  GET /api/datasets/REPO/tree/COMMIT[/DIR]?recursive=true&expand=true[&cursor=N]
      -> a page of entries, Link: <next>; rel="next" while more remain
  GET /datasets/REPO/resolve/COMMIT/PATH   -> 302 to /cdn/SHA256?sig=...
  GET /cdn/SHA256                          -> the bytes (Range, ETag)
Files named README* are listed as plain git files (no LFS).

Faults come from a JSON file (--faults), read on every request so a test
can change it between runs:
  {"PATH": ["503", "429", "ratelimit", "cut", "stall", "norange", "slow", "corrupt",
            "gone"], ...,
   "@tree": ["503"], "@extra": [{"path": "../evil", "size": 1}],
   "@lie": {"PATH": "sha256 the listing claims"}}
Each list is consumed one entry per download request of that file, except
"slow" and "corrupt" which stay in force while listed last.  Every request is
logged to --log as one JSON line.
"""
import argparse
import hashlib
import http.server
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()


def file_table(root):
    table = {}
    for d, _, names in os.walk(root):
        for n in names:
            full = os.path.join(d, n)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            data = open(full, "rb").read()
            git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            table[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "oid": git, "full": full}
    return table


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1"

    def log_message(self, fmt, *args):
        pass

    def record(self, status, **extra):
        entry = {"method": self.command, "path": self.path, "status": status,
                 "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        entry.update(extra)
        with LOCK:
            with open(self.server.opts.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def faults(self):
        try:
            with open(self.server.opts.faults) as f:
                return json.load(f)
        except (OSError, ValueError, TypeError):
            return {}

    def take_fault(self, key):
        """Pop the next fault for key (persistent ones stay)."""
        with LOCK:
            fl = self.faults()
            q = fl.get(key) or []
            if not q:
                return None
            f = q[0]
            if f not in ("slow", "corrupt") or len(q) > 1:
                q.pop(0)
                fl[key] = q
                with open(self.server.opts.faults, "w") as fp:
                    json.dump(fl, fp)
            return f

    def send_json(self, obj, status=200, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.record(status)

    def send_error_simple(self, status, headers=None):
        body = b'{"error": "simulated"}'
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.record(status)

    def do_GET(self):
        o = self.server.opts
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        api = "/api/datasets/%s/" % o.repo
        if path.startswith(api + "revision/"):
            rev = path[len(api + "revision/"):]
            if rev in ("main", o.commit):
                return self.send_json({"id": o.repo, "sha": o.commit})
            return self.send_error_simple(404)
        if path.startswith(api + "tree/"):
            return self.tree(path[len(api + "tree/"):], query)
        res = "/datasets/%s/resolve/%s/" % (o.repo, o.commit)
        if path.startswith(res):
            rel = path[len(res):]
            table = self.server.table
            if rel not in table:
                return self.send_error_simple(404)
            loc = "/cdn/%s?sig=%d" % (table[rel]["sha256"], int(time.time()))
            if o.absolute_redirect:
                loc = "http://%s:%d%s" % (self.server.server_address[0], self.server.server_address[1], loc)
            body = b""
            self.send_response(302)
            self.send_header("Location", loc)
            self.send_header("X-Repo-Commit", o.commit)
            self.send_header("X-Linked-Size", str(table[rel]["size"]))
            self.send_header("X-Linked-Etag", '"%s"' % table[rel]["sha256"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.record(302)
            return
        if path.startswith("/cdn/"):
            return self.cdn(path[5:])
        return self.send_error_simple(404)

    def tree(self, rest, query):
        o = self.server.opts
        if not rest.startswith(o.commit):
            return self.send_error_simple(404)
        if self.take_fault("@tree") == "503":
            return self.send_error_simple(503)
        prefix = rest[len(o.commit):].lstrip("/")
        entries = []
        dirs = set()
        lie = self.faults().get("@lie", {})
        for rel, info in sorted(self.server.table.items()):
            if prefix and not rel.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = rel.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            e = {"type": "file", "oid": info["oid"], "size": info["size"], "path": rel}
            if os.path.basename(rel).startswith("README"):
                e["oid"] = lie.get(rel, info["oid"])
            else:
                e["lfs"] = {"oid": lie.get(rel, info["sha256"]), "size": info["size"],
                            "pointerSize": 134}
            entries.append(e)
        for d in sorted(dirs):
            if not prefix or d.startswith(prefix.rstrip("/") + "/"):
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        for x in self.faults().get("@extra", []):
            entries.append({"type": "file", "oid": "1" * 40, "size": x["size"], "path": x["path"],
                            "lfs": {"oid": "2" * 64, "size": x["size"], "pointerSize": 134}})
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + o.page_size]
        headers = {}
        if cursor + o.page_size < len(entries):
            host = o.link_host or "http://%s:%d" % self.server.server_address[:2]
            nxt = "%s/api/datasets/%s/tree/%s?recursive=true&expand=true&cursor=%d" % (
                host, o.repo, rest, cursor + o.page_size)
            headers["Link"] = '<%s>; rel="next"' % nxt
        self.send_json(page, headers=headers)

    def cdn(self, sha):
        info = None
        for rel, i in self.server.table.items():
            if i["sha256"] == sha:
                info, name = i, rel
                break
        if info is None:
            return self.send_error_simple(404)
        fault = self.take_fault(name)
        if fault == "503":
            return self.send_error_simple(503)
        if fault == "429":
            return self.send_error_simple(429, {"Retry-After": "1"})
        if fault == "ratelimit":
            return self.send_error_simple(429, {"RateLimit": '"resolvers";r=0;t=1'})
        if fault == "gone":
            return self.send_error_simple(404)
        data = open(info["full"], "rb").read()
        if fault == "corrupt":
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self.server.opts.ignore_range and fault != "norange":
            a, _, b = rng[6:].partition("-")
            start = int(a)
            end = int(b) if b else len(data) - 1
            if start >= len(data):
                return self.send_error_simple(416, {"Content-Range": "bytes */%d" % len(data)})
            data_part = data[start:end + 1]
            status = 206
        else:
            data_part = data
        self.send_response(status)
        self.send_header("Content-Length", str(len(data_part)))
        self.send_header("ETag", '"%s"' % sha)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, start + len(data_part) - 1, len(data)))
        self.end_headers()
        self.record(status, start=start)
        if fault == "stall":
            self.wfile.write(data_part[: len(data_part) // 3])
            self.wfile.flush()
            time.sleep(4)
            self.close_connection = True
            return
        if fault == "cut":
            self.wfile.write(data_part[: len(data_part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = 65536
        for i in range(0, len(data_part), step):
            try:
                self.wfile.write(data_part[i:i + step])
            except OSError:
                return
            if fault == "slow":
                self.wfile.flush()
                time.sleep(0.05)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--repo", default="test/fineweb-mini")
    ap.add_argument("--commit", default="0123456789abcdef0123456789abcdef01234567")
    ap.add_argument("--page-size", type=int, default=2)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--faults", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--absolute-redirect", action="store_true")
    ap.add_argument("--ignore-range", action="store_true")
    ap.add_argument("--link-host", help="scheme://host for Link headers (a mirror's answers)")
    opts = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    srv.opts = opts
    srv.table = file_table(opts.root)
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, opts.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
