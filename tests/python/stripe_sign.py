"""Makes Stripe-Signature headers with Stripe's official Python library.

The webhook tests sign their payloads here, so the proxy's verifier is
checked against Stripe's own code, not against itself. The HMAC is never
computed in this file: `stripe.WebhookSignature.generate_signature_header`
does it, exactly as the library's own tests do.

Input (stdin): a JSON list of {"payload": str, "secret": str,
"timestamp": int}. Output (stdout): a JSON list of the headers, in order.
Each header is also checked with the library's verifier (with no
tolerance), so a header this script prints is one Stripe's code accepts.
"""

import json
import sys

import stripe


def main() -> None:
    requests = json.load(sys.stdin)
    headers = []
    for request in requests:
        payload = request["payload"]
        secret = request["secret"]
        header = stripe.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=int(request["timestamp"])
        )
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
        headers.append(header)
    json.dump({"stripe_version": stripe.VERSION, "headers": headers}, sys.stdout)


if __name__ == "__main__":
    main()
