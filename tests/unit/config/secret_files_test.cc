// SecretFileWarnings: which secret files outboxd warns about.
#include "config/secret_files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace outboxd {
namespace {

class SecretFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "outboxd-secrets-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string File(const std::string& name, mode_t mode) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << "secret\n";
    EXPECT_EQ(0, ::chmod(path.c_str(), mode));
    return path;
  }

  std::string dir_;
};

TEST_F(SecretFilesTest, OnlyTheOwnerMayReadIsQuiet) {
  Config c;
  c.postgres.password_file = File("pg", 0600);
  c.kafka.password_file = File("kafka", 0400);
  c.kafka.properties["ssl.key.location"] = File("key", 0600);
  EXPECT_TRUE(SecretFileWarnings(c).empty());
}

TEST_F(SecretFilesTest, EachFileOthersMayReadIsNamedWithItsKeyAndMode) {
  Config c;
  c.postgres.password_file = File("pg", 0644);
  c.kafka.password_file = File("kafka", 0604);
  c.kafka.properties["ssl.key.location"] = File("key", 0666);
  const auto warnings = SecretFileWarnings(c);
  ASSERT_EQ(3u, warnings.size());
  EXPECT_EQ("\"" + c.postgres.password_file +
                "\" (password_file in [postgres]) holds a secret but has mode 0644: others than its owner may read "
                "it (chmod 600 \"" +
                c.postgres.password_file + "\")",
            warnings[0]);
  EXPECT_NE(std::string::npos, warnings[1].find("(password_file in [kafka]) holds a secret but has mode 0604"));
  EXPECT_NE(std::string::npos,
            warnings[2].find("(\"ssl.key.location\" in [kafka.properties]) holds a secret but has mode 0666"));
}

// Group read is allowed for a file root owns (a service's group reads it),
// as libpq allows for its key files; not for anyone else's.
TEST_F(SecretFilesTest, GroupReadIsAllowedOnlyWhenRootOwnsTheFile) {
  Config c;
  c.kafka.password_file = File("kafka", 0640);
  EXPECT_EQ(::geteuid() == 0 ? 0u : 1u, SecretFileWarnings(c).size());
  ASSERT_EQ(0, ::chmod(c.kafka.password_file.c_str(), 0660));
  EXPECT_EQ(1u, SecretFileWarnings(c).size());
}

TEST_F(SecretFilesTest, AFileThatCannotBeExaminedIsLeftToItsReader) {
  Config c;
  c.kafka.password_file = dir_ + "/absent";
  EXPECT_TRUE(SecretFileWarnings(c).empty());
}

}  // namespace
}  // namespace outboxd
