DROP TABLE user_revocations;
