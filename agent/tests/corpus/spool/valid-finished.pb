
$0190a1b2-0000-7000-8000-0000000000e1$0190a1b2-0000-7000-8000-0000000000f1"†
$0190a1b2-0000-7000-8000-0000000000b1 ÷½ØÀ²Í;"Ìù½Ø(2–
@9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e ğ(08¬@ÿHÀâ°iP€€@X€€ b¡÷½Øj/etcj/homer
finance-01x‚cofre‚finance:$/home/a/locked.db: permission denied:#â€¦ and 3 more warnings, not listedJ$0190a1b2-0000-7000-8000-00000000000aZ;== before hook dump-db: exit 0 in 2.1 s
dumped 3 databases
