"""The pod programs that run inside the operator's own image.

``configure`` provisions a job's data volume (inputs, algorithm, DDOs) before
the algorithm runs; ``publish`` uploads the results and logs afterwards.
Both report back to the operator through the container's termination message
(docs/contract.md §2.3, "How the pods report back") and their exit code, and log to
stdout and to an admin log file, with credential values and URL query strings
masked; configure's log (published to the consumer) names no URL at all.

Environment (defaults in brackets)

Both programs:
    VOLUME [/data]                          root of the data volume (docs/contract.md §2.4)
    ADMINLOGS [/data/adminlogs]             admin logs volume (configure.log, publish.log)
    WORKFLOW [/workflow.json]               {"jobId": "W", "stages": [STAGE]}
    TERMINATION_LOG [/dev/termination-log]  where the JSON report goes

configure:
    diskGB [unset: no limit]                ceiling, in GiB, on the total bytes downloaded
    CONFIGURE_TIMEOUT [30]                  connect and read timeout, seconds
    CONFIGURE_BACKOFF [0.5]                 backoff factor (3 retries on connection
                                            errors, read errors and 500/502/503/504)
    CONFIGURE_TOTAL_TIMEOUT [1800]          seconds one download may take in all; 0 = no limit
    CONFIGURE_OVERALL_TIMEOUT [3000]        seconds all downloads may take together; 0 = no limit
    CONFIGURE_ALLOWED_NETWORKS [unset]      CIDRs and host names fetched from although loopback,
                                            link-local, private, CGNAT or reserved (refused by
                                            default; see operator_engine/pods/addresses.py)
    -> failure: {"statusCode": 31 (data/workflow) or 32 (algorithm), "message": ...}, exit 1;
       success: nothing written, exit 0.

publish (first target whose variable is set wins):
    IPFS_OUTPUT, IPFS_ADMINLOGS [IPFS_OUTPUT], IPFS_OUTPUT_PREFIX [ipfs://],
    IPFS_ADMINLOGS_PREFIX [IPFS_OUTPUT_PREFIX], IPFS_TYPE [CLIENT; CLUSTER = ipfs-cluster],
    IPFS_EXPIRY_TIME [unset; "0" = none; cluster only], IPFS_API_KEY, IPFS_API_CLIENT
    AWS_BUCKET_OUTPUT, AWS_BUCKET_ADMINLOGS [AWS_BUCKET_OUTPUT], AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL,
    STORAGE_EXPIRY [0] (hours; > 0: pre-signed URLs, at most 7 days; 0: s3://bucket/key)
    LOCAL_STORAGE_DIR                       copies to <dir>/<jobId>/..., file:// URLs
    PUBLISH_TIMEOUT [600]                   IPFS read timeout, seconds
    PUBLISH_OUTPUTS [true]                  false: upload the logs only (the filter stage failed)
    -> success: {"algologUrl", "configlogUrl", "publishlogUrl", "outputsUrl": [...]}, exit 0
       (a log that does not exist gives null); failure: {"message": ...}, exit 1.
"""
