"""kyc-host: one Tornado server hosting the KYC service (SEP-1, SEP-10, SEP-12) of many anchors."""

__version__ = "0.1.0"
