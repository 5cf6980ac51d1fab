#!/usr/bin/env python3
"""Test upstream: git smart HTTP (`git http-backend` as CGI) behind HTTP Basic or Bearer auth,
plus static GOPROXY files, for gocred's end-to-end tests. Standard library only.

usage: git_http_server.py --port N [--bind ADDR] [--tls-cert C --tls-key K] [--git-root DIR]
                          [--goproxy-root DIR] [--user U --password P] [--bearer TOKEN]
                          [--go-import-host HOST] [--exact-repo-paths]
Every request is logged to stderr as `REQ <method> <path> auth=<scheme or none>` (never the
credential itself), so tests can count what reached the upstream.
"""
import argparse, base64, http.server, os, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--git-root")
ap.add_argument("--goproxy-root")
ap.add_argument("--user")
ap.add_argument("--password")
ap.add_argument("--bearer")
ap.add_argument("--go-import-host")
ap.add_argument("--exact-repo-paths", action="store_true",
                help="serve a repository only under its on-disk name (no `<path>.git` fallback)")
ap.add_argument("--bind", default="127.0.0.1")
ap.add_argument("--anonymous", action="store_true", help="serve without credentials (a public proxy)")
ap.add_argument("--tls-cert")
ap.add_argument("--tls-key")
ap.add_argument("--anonymous-refs", action="store_true",
                help="answer info/refs without credentials (only fetching needs them)")
ap.add_argument("--fault", choices=["503", "stall"], help="misbehave on every --fault-every-th request")
ap.add_argument("--fault-every", type=int, default=3)
ap.add_argument("--stall-secs", type=float, default=5.0)
args = ap.parse_args()
import threading, time
COUNT = [0]
COUNT_LOCK = threading.Lock()
BACKEND = os.path.join(subprocess.check_output(["git", "--exec-path"], text=True).strip(), "git-http-backend")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, fmt, *a):
        pass

    def authorized(self):
        h = self.headers.get("Authorization", "")
        if args.anonymous:
            return "anonymous"
        if args.bearer and h == "Bearer " + args.bearer:
            return "bearer"
        if args.user and h.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
            except Exception:
                return None
            if user == args.user and pw == args.password:
                return user
        return None

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def end_headers(self):
        # Headers a proxy must never hand back to its caller: one named hop-by-hop by Connection,
        # an upstream challenge, an upstream credential, a cookie.
        self.send_header("Connection", "X-Upstream-Session")
        self.send_header("X-Upstream-Session", "upstream-session-value")
        self.send_header("Proxy-Authenticate", 'Basic realm="upstream-proxy"')
        self.send_header("Authorization", "Basic dXBzdHJlYW06aW50ZXJuYWw=")
        self.send_header("Set-Cookie", "upstream_session=cookie-value")
        super().end_headers()

    def send(self, status, payload, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def fault(self):
        """The injected fault for this request (every --fault-every-th, starting with the first)."""
        if not args.fault:
            return None
        with COUNT_LOCK:
            COUNT[0] += 1
            n = COUNT[0]
        return args.fault if n % args.fault_every == 1 % args.fault_every else None

    def handle_any(self):
        data = self.body() if self.command == "POST" else b""
        f = self.fault()
        sys.stderr.write("FAULT %s %s\n" % (f, self.path) if f else "")
        if f == "503":
            return self.send(503, b"injected fault\n", extra=[("Retry-After", "0")])
        if f == "stall":
            time.sleep(args.stall_secs)
        path, _, query = self.path.partition("?")
        who = self.authorized()
        # --anonymous-refs: listing refs needs no credential (GET info/refs, and protocol v2's
        # `command=ls-refs`), fetching objects does — git asks for a password only then.
        lists = (self.command == "GET" and path.endswith("/info/refs")) or (
            self.command == "POST" and path.endswith("/git-upload-pack") and b"command=ls-refs" in data)
        if who is None and args.anonymous_refs and lists:
            who = "anonymous"
        scheme = self.headers.get("Authorization", "none").split(" ")[0]
        sys.stderr.write("REQ %s %s auth=%s\n" % (self.command, self.path, scheme))
        sys.stderr.flush()
        if who is None:
            return self.send(401, b"unauthorized\n", extra=[("WWW-Authenticate", 'Basic realm="upstream"')])
        if args.go_import_host and "go-get=1" in query.split("&"):
            parts = path.strip("/").split("/")
            # The longest path prefix that is a repository on disk (GitLab-style subgroups),
            # else the first two elements; advertised under its on-disk name (`.git` or not).
            n = next((i for i in range(len(parts), 0, -1)
                      if any(os.path.isdir(os.path.join(args.git_root or "", "/".join(parts[:i]) + sfx))
                             for sfx in ("", ".git"))), 2)
            repo = "/".join(parts[:n])
            if not os.path.isdir(os.path.join(args.git_root or "", repo)):
                repo += ".git"
            root = args.go_import_host + "/" + "/".join(parts[:n])
            page = ('<html><head><meta name="go-import" content="%s git https://%s/%s"></head></html>\n'
                    % (root, args.go_import_host, repo)).encode()
            return self.send(200, page, "text/html")
        if path.startswith("/mod/") and args.goproxy_root:
            rel = os.path.normpath(path[len("/mod/"):])
            full = os.path.join(args.goproxy_root, rel)
            if rel.startswith("..") or not os.path.isfile(full):
                return self.send(404, b"not found\n")
            with open(full, "rb") as f:
                return self.send(200, f.read(), "application/octet-stream")
        if not args.git_root:
            return self.send(404, b"not found\n")
        # git http-backend finds `<path>.git` for `<path>` (but not `<path>` for `<path>.git`); with
        # --exact-repo-paths, like many servers, only the on-disk name is served.
        repo = path
        for suffix in ("/info/refs", "/git-upload-pack", "/git-receive-pack"):
            if repo.endswith(suffix):
                repo = repo[: -len(suffix)]
        if args.exact_repo_paths and not os.path.isdir(os.path.join(args.git_root, repo.strip("/"))):
            return self.send(404, b"repository not found\n")
        env = dict(os.environ, GIT_PROJECT_ROOT=args.git_root, GIT_HTTP_EXPORT_ALL="1", REQUEST_METHOD=self.command,
                   PATH_INFO=path, QUERY_STRING=query, CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(data)), REMOTE_USER=who, REMOTE_ADDR=self.client_address[0],
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        p = subprocess.run([BACKEND], input=data, env=env, capture_output=True)
        sep = b"\r\n\r\n" if b"\r\n\r\n" in p.stdout else b"\n\n"
        head, _, payload = p.stdout.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        ctype = dict((k.lower(), v) for k, v in headers).get("content-type", "application/octet-stream")
        self.send(status, payload, ctype, [(k, v) for k, v in headers if k.lower() != "content-type"])

    do_GET = do_POST = handle_any


srv = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
if args.tls_cert:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", args.port, flush=True)
srv.serve_forever()
