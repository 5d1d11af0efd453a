"""Posts one webhook delivery to tollgate-polar the way Polar sends it.

The body (a Polar event as JSON) comes on stdin. It is signed with the
reference Standard Webhooks library, so a mistake in the adapter's verifier
cannot hide behind the same mistake here. Polar signs with the UTF-8 bytes of
the endpoint's secret as its dashboard shows it; a `whsec_` secret is passed
to the library as it is (the library decodes it).

Prints one JSON line: {"status": <HTTP status>, "body": <answer>, "seconds": <time to answer>}.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True, help="the secret the delivery is signed with")
    p.add_argument("--id", required=True, help="the webhook-id")
    p.add_argument("--age-seconds", type=int, default=0, help="how old the timestamp is (negative: in the future)")
    p.add_argument("--tamper", action="store_true", help="change the body after signing")
    p.add_argument("--drop-header", action="append", default=[], help="leave this header out")
    p.add_argument("--secret-bytes", action="store_true", help="sign with the secret's UTF-8 bytes even if it starts with whsec_")
    p.add_argument("--extra-signature", action="store_true", help="put a wrong v1 signature before the right one")
    args = p.parse_args()

    body = sys.stdin.buffer.read().decode("utf-8")
    whsec = args.secret.startswith("whsec_") and not args.secret_bytes
    secret = args.secret if whsec else args.secret.encode("utf-8")
    sent_at = datetime.now(timezone.utc) - timedelta(seconds=args.age_seconds)
    signature = Webhook(secret).sign(args.id, sent_at, body)
    if args.extra_signature:
        signature = "v1,bm90IHRoZSByaWdodCBzaWduYXR1cmUgYXQgYWxsIQ== " + signature
    headers = {
        "content-type": "application/json",
        "webhook-id": args.id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }
    for name in args.drop_header:
        headers.pop(name)
    if args.tamper:
        body = body.replace("sub_", "sub-", 1) if "sub_" in body else body + " "
    request = urllib.request.Request(args.url, data=body.encode("utf-8"), headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8")
    print(json.dumps({"status": status, "body": text, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
