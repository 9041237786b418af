ºµ‚≥≈∆ˆ
$0190a1b2-0000-7000-8000-00000000000a/https://store.example.org:8000/finance/0190a1b2*k7Qm1x‚Ä¶repository-password2@5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e5f1c0a7e:;-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
H€
$0190a1b2-0000-7000-8000-0000000000b1nightly$0190a1b2-0000-7000-8000-00000000000a"/etc"/home**.tmp:,

30 2 * * *Europe/Lisbon Ñ*01:00206:00B*.ISOJ	.nobackupPÄÄÄÄXbfinancej
dump-dbÿr
notifyÿxa
$0190a1b2-0000-7000-8000-0000000000b2hourly$0190a1b2-0000-7000-8000-00000000000a"/srv:êx