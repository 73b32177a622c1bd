-- Login attempts with a parsed time, by known users only.
SELECT
    TRY_CAST(trim(l.login_id) AS BIGINT)                                    AS login_id,
    TRY_CAST(trim(l.user_id) AS BIGINT)                                     AS user_id,
    try_to_timestamp(l.login_at, '%Y-%m-%d %H:%M:%S', '%d/%m/%Y %H:%M')     AS login_at,
    CAST(try_to_timestamp(l.login_at, '%Y-%m-%d %H:%M:%S', '%d/%m/%Y %H:%M') AS DATE) AS login_date,
    lower(trim(l.device))                                                   AS device,
    CASE trim(l.success) WHEN '1' THEN TRUE WHEN '0' THEN FALSE END         AS success,
    u.user_id IS NOT NULL                                                   AS _known_user,
    l.login_at                                                              AS _login_at_text,
    l._source_file, l._source_line
FROM bronze.logins l
LEFT JOIN silver.users u ON TRY_CAST(trim(l.user_id) AS BIGINT) = u.user_id
