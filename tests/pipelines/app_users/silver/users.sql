-- One row per user from both exports; the row from the latest file wins.
WITH unioned AS (
    SELECT
        TRY_CAST(trim(user_id) AS BIGINT)          AS user_id,
        lower(trim(email))                         AS email,
        trim(full_name)                            AS full_name,
        try_to_date(signup_date, '%Y-%m-%d')       AS signup_date,
        CASE lower(trim(is_active)) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END AS is_active,
        'web'                                      AS channel,
        signup_date                                AS _signup_text,
        is_active                                  AS _active_text,
        _source_file, _source_line
    FROM bronze.users_web
    UNION ALL
    SELECT
        TRY_CAST(trim(user_id) AS BIGINT)          AS user_id,
        lower(trim(email))                         AS email,
        trim(full_name)                            AS full_name,
        try_to_date(signup_date, '%d/%m/%Y')       AS signup_date,
        CASE upper(trim(is_active)) WHEN 'YES' THEN TRUE WHEN 'Y' THEN TRUE WHEN 'NO' THEN FALSE WHEN 'N' THEN FALSE END AS is_active,
        'app'                                      AS channel,
        signup_date                                AS _signup_text,
        is_active                                  AS _active_text,
        _source_file, _source_line
    FROM bronze.users_app
)
SELECT * FROM unioned
