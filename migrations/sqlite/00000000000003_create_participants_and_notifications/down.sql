DROP TABLE notifications;
DROP TABLE participants;
