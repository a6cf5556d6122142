CREATE ROLE airflow LOGIN PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE recsys LOGIN PASSWORD 'recsys';
CREATE DATABASE shop OWNER recsys;
-- the site's login; homepage_reader (created by the first publish) grants it the views
CREATE ROLE site LOGIN PASSWORD 'site';
