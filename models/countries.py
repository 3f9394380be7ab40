"""ISO 3166-1 alpha-2 country codes, and the EU's own spellings that map onto them."""

ISO_ALPHA2 = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW
BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI
FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN
IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME
MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF
PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE
YT ZA ZM ZW XK
""".split())  # XK (Kosovo) is user-assigned but used by the EU and CORDIS.

# The EU writes Greece as EL and the United Kingdom as UK; the store keeps ISO codes.
EU_ALIASES = {"EL": "GR", "UK": "GB"}


def normalise_country(value: str) -> str:
    """Upper-case a code, map EL/UK to GR/GB, and raise ValueError for anything not ISO 3166-1 alpha-2."""
    code = value.strip().upper()
    code = EU_ALIASES.get(code, code)
    if code not in ISO_ALPHA2:
        raise ValueError(f"'{value}' is not an ISO 3166-1 alpha-2 country code")
    return code
