DROP TABLE publish_keys;
