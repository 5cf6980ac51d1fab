#!/usr/bin/env python3
"""Plays the user at oidc-provider's built-in login pages (stdlib only).

  approve.py BASE LOGIN device USER_CODE   approve a device-flow user code
  approve.py BASE LOGIN browser AUTH_URL   follow the authorization URL, log in, consent, then
                                           deliver the code to the loopback redirect (what a
                                           browser does); usable as `gocred login --browser-command`
"""
import http.cookiejar, re, sys, urllib.error, urllib.parse, urllib.request

BASE, LOGIN, MODE, ARG = sys.argv[1:5]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


jar = http.cookiejar.CookieJar()
op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)


def req(url, data=None):
    url = urllib.parse.urljoin(BASE, url)
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        r = op.open(urllib.request.Request(url, data=body), timeout=30)
        return r.status, r.headers.get("Location"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location"), e.read().decode()


def is_loopback(url):
    return url is not None and urllib.parse.urljoin(BASE, url).startswith("http://127.0.0.1:") and \
        not urllib.parse.urljoin(BASE, url).startswith(BASE)


def follow(url, data=None):
    status, loc, body = req(url, data)
    while status in (302, 303) and loc:
        if is_loopback(loc):
            return status, loc, body
        status, loc, body = req(loc)
    return status, loc, body


def interact(body):
    for _ in range(6):
        m = re.search(r'action="([^"]*/interaction/[^"]+)"', body)
        if not m:
            return None, body
        if 'name="prompt" value="login"' in body:
            data = {"prompt": "login", "login": LOGIN, "password": "any"}
        else:
            data = {"prompt": "consent"}
        status, loc, body = follow(m.group(1), data)
        if is_loopback(loc):
            return loc, body
    return None, body


if MODE == "device":
    _, _, body = follow("/device")
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', body).group(1)
    _, _, body = follow("/device", {"xsrf": xsrf, "user_code": ARG})
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
    _, _, body = follow("/device", hidden)
    _, body = interact(body)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body.split("<body>")[-1])).strip()
    print("device approval:", text[:160])
    sys.exit(0 if "Sign-in Success" in text or "success" in text.lower() else 1)
else:
    status, loc, body = follow(ARG)
    if not is_loopback(loc):
        loc, body = interact(body)
    if not loc:
        print("no redirect back to the loopback address", file=sys.stderr)
        sys.exit(1)
    with urllib.request.urlopen(loc, timeout=30) as r:
        print("callback answered", r.status)
