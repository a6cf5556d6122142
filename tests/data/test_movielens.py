import pyarrow.parquet as pq
import pytest

from recsys.data.movielens import ImportError_, import_movielens
from tests.conftest import MOVIELENS


def test_tiny_movielens(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,86400\n1,20,2.5,86500\n2,10,5.0,172800\n")
    (src / "movies.csv").write_text('movieId,title,genres\n10,Toy Story (1995),Animation|Comedy\n20,"Heat, The (1995)",Action\n30,Unseen (2000),(no genres listed)\n')
    (src / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,Pixar,1\n2,10,pixar,2\n2,10,funny,3\n")
    info = import_movielens(src, tmp_path / "out")
    assert info["events"] == 3 and info["event_partitions"] == 2 and info["suggested_date"] == "1970-01-04"
    ev = pq.read_table(tmp_path / "out" / "events" / "dt=1970-01-02").to_pandas()
    assert ev[["user_id", "item_id", "event_type", "value"]].values.tolist() == [
        ["u1", "m10", "rate", 4.0], ["u1", "m20", "rate", 2.5]]  # fmt: skip
    cat = pq.read_table(tmp_path / "out" / "catalog" / "dt=1970-01-04").to_pandas().set_index("item_id")
    assert cat.loc["m10", "category"] == "Animation"
    assert cat.loc["m10", "description"] == "Genres: Animation, Comedy. Tagged: pixar, funny."
    assert cat.loc["m20", "title"] == "Heat, The (1995)"
    assert len(cat) == 3  # unrated movies stay in the catalog (cold items)


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(ImportError_, match="ratings.csv"):
        import_movielens(tmp_path, tmp_path / "out")


@pytest.mark.movielens
@pytest.mark.skipif(not MOVIELENS.is_dir(), reason="ml-latest-small not present")
def test_real_movielens_small(tmp_path):
    import pandas as pd

    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    movies = pd.read_csv(MOVIELENS / "movies.csv")
    info = import_movielens(MOVIELENS, tmp_path)
    # Every rating becomes one event, every movie one catalog item: nothing dropped.
    assert info["events"] == len(ratings) and info["items"] == len(movies)
    assert info["users"] == ratings["userId"].nunique()
