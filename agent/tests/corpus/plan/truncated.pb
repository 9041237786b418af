¼µâ³ÅÆö
$0190a1b2-0000-7000-8000-00000000000a/https://store.example.org:8000/finance/0190a1b2*k7Qm1xâ€¦repository-password2@5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e:;-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
HÛ
$0190a1b2-0000-7000-8000-000